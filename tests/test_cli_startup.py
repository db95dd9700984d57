"""The command line starts without torch, and its --help states the code's defaults.

`ddpmcodec --help`, every `ddpmcodec CMD --help` and every usage error answer without
importing torch (3+ s) or anything else heavy: the commands import those inside their
functions, and the defaults that --help shows come from torch-free modules. The check
that counts is which modules a fresh interpreter holds afterwards; the wall time is only
a loose guard. The help texts are then checked against the constants the code uses, so
that a changed default cannot leave a stale help behind.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from ddpmcodec.cli import main

HEAVY = ("torch", "diffusers", "scipy", "matplotlib", "pandas", "lpips", "PIL", "imagecodecs",
         "ddpmcodec.pipelines", "ddpmcodec.io.models", "ddpmcodec.io.data", "ddpmcodec.analysis")

# Runs main() on each argv in a fresh interpreter; writes exit codes, outputs and the heavy
# modules it ended up holding to the file named by its first argument.
SCRIPT = r"""
import json, sys, typer
from ddpmcodec.cli import app, main
commands = sorted(typer.main.get_command(app).commands)
argvs = [["--help"], ["encode", "-o", "x.ddpm", "--steps", "notanint"], ["decode"],
         ["encode", "-o", "x.ddpm", "--lossless", "--progressive", "--psnr", "30"],
         ["decode", "missing.ddpm", "-o", "x.npz"]]
argvs += [[c, "--help"] for c in commands] + [[c, "--no-such-option"] for c in commands]
codes = {" ".join(a): main(a) for a in argvs}
light = {"ddpmcodec.pipelines", "ddpmcodec.pipelines.defaults"}  # constants only
heavy = [h for h in json.loads(sys.argv[2])
         if any((m == h or m.startswith(h + ".")) and m not in light for m in sys.modules)]
with open(sys.argv[1], "w") as f:
    json.dump({"commands": commands, "codes": codes, "heavy": heavy}, f)
"""


def test_help_and_usage_errors_import_nothing_heavy(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(report), json.dumps(HEAVY)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["heavy"] == [], f"imported at start-up: {r['heavy']}"
    assert set(r["commands"]) >= {"nll", "rd-curve", "encode", "decode", "train", "report",
                                  "bench", "calibrate"}
    codes = r["codes"]
    for c in r["commands"]:
        assert codes[f"{c} --help"] == 0 and codes[f"{c} --no-such-option"] == 2
    assert codes["--help"] == 0
    assert codes["encode -o x.ddpm --steps notanint"] == 2 and codes["decode"] == 2
    # a user's mistake in the options is a one-line error before torch is loaded
    assert codes["encode -o x.ddpm --lossless --progressive --psnr 30"] == 1
    assert codes["decode missing.ddpm -o x.npz"] == 1
    assert "Traceback" not in proc.stderr
    assert "Invalid value for '--steps' / '-K'" in proc.stderr
    assert "ddpmcodec: error: --progressive --lossless codes every step" in proc.stderr
    assert "Usage: ddpmcodec encode" in proc.stdout and "Usage: ddpmcodec calibrate" in proc.stdout


def test_help_answers_quickly():
    """A loose guard only (the modules above are the real check): the best of three runs,
    so that a loaded machine does not fail it. It took 1.6-3.7 s while torch was loaded."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ddpmcodec", "--help"], capture_output=True,
                              text=True, timeout=60)
        best = min(best, time.perf_counter() - t)
        assert proc.returncode == 0 and "encode" in proc.stdout
    assert best < 2.0


# -- the help states the code's defaults ------------------------------------------------
def render(capsys, *command: str) -> str:
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


def _flat(text: str) -> str:
    # undo click's wrapping, which also breaks words after a hyphen ("comma-\n separated")
    return " ".join(re.sub(r"-\n\s+", "-", text).split())


def options(text: str) -> dict[str, str]:
    """--name -> its help line(s) as one line (the option names included), from a help."""
    blocks, name = {}, None
    for line in text.splitlines():
        m = re.match(r"  (?:-\w, )?(--[\w-]+)", line)
        if m:
            name = m.group(1)
            blocks[name] = line
        elif name is not None and line.startswith("      "):
            blocks[name] += "\n" + line
        else:
            name = None
    return {k: _flat(v) for k, v in blocks.items()}


def test_encode_help_states_the_codecs_defaults(capsys):
    from ddpmcodec.codec.lossless import params as L
    from ddpmcodec.codec.progressive import params as P
    from ddpmcodec.io.chain_choice import ChainOptions
    text = render(capsys, "encode")
    o, whole = options(text), _flat(text)
    assert f"(default: {L.DEFAULT_STEPS} for --lossless, {P.DEFAULT_STEPS} for --progressive)" \
        in o["--steps"]
    assert "full chain" not in o["--steps"]
    assert (f"default: {L.DEFAULT_TRAJECTORY} for --lossless ('{ChainOptions.trajectory}' once "
            f"--variance is given)") in o["--trajectory"]
    assert (f"default: {L.DEFAULT_VARIANCE} for --lossless ('{ChainOptions.variance}' once "
            f"--trajectory") in o["--variance"]
    assert f"[default: {L.DEFAULT_BATCH}]" in o["--batch-size"]
    assert f"[default: {L.DEFAULT_GRID_LOG2}]" in o["--grid-log2"]
    assert f"[default: {L.DEFAULT_SUPPORT_SIGMAS}]" in o["--support-sigmas"]
    assert "one image: the classical file" in o["--method"]
    assert f"(default {P.DEFAULT_CHUNK_BITS:g})" in o["--chunk-bits"]
    assert f"(default {P.DEFAULT_MARGIN_BITS:g};" in o["--margin"]
    assert f"(1-{P.MAX_CHECK_BITS}, default {P.DEFAULT_CHECK_BITS}:" in o["--check-bits"]
    assert f"on a {L.DEFAULT_STEPS}-step chain chosen by dynamic programming" in whole
    assert (f"`ddpmcodec nll --steps {L.DEFAULT_STEPS} --trajectory {L.DEFAULT_TRAJECTORY} "
            f"--variance {L.DEFAULT_VARIANCE}`") in whole
    assert f"on {P.DEFAULT_STEPS} geometrically spaced coded steps" in whole


def test_decode_and_rd_curve_help_state_the_progressive_defaults(capsys):
    from ddpmcodec.codec.progressive import params as P
    o = options(render(capsys, "decode"))
    assert f"(default {P.DEFAULT_RECON_STEPS})" in o["--recon-steps"]
    assert f"{', '.join(P.RECONS)} (default {P.RECONS[0]})" in o["--recon"]
    o = options(render(capsys, "rd-curve"))
    assert f"--codec progressive the codec's {P.DEFAULT_STEPS} geometric steps" in o["--steps"]
    assert f"(default {P.DEFAULT_CHUNK_BITS:g})" in o["--chunk-bits"]
    assert f"(default {P.DEFAULT_MARGIN_BITS:g})" in o["--margin"]
    assert f"{', '.join(P.RECONS)} (repeat the option; default {P.RECONS[0]})" in o["--recon"]


def test_nll_bench_train_calibrate_help_state_their_defaults(capsys):
    # the engines take these defaults from the torch-free pipelines.defaults, which the
    # help reads too; default_batch checks that the engine really uses them
    from ddpmcodec.cli import bench, calibrate, train
    from ddpmcodec.io.chain_choice import ChainOptions
    from ddpmcodec.pipelines.defaults import DEFAULT_NFE, PLAIN_BATCH
    from ddpmcodec.pipelines.engine import default_batch
    fast = f"default {default_batch('cuda')} on CUDA, {default_batch('cpu')} on the CPU"
    o = options(render(capsys, "nll"))
    assert f"[default: {ChainOptions.trajectory}]" in o["--trajectory"]
    assert f"[default: {ChainOptions.variance}]" in o["--variance"]
    assert f"(default {DEFAULT_NFE})" in o["--nfe"]
    assert fast in o["--batch-size"]
    assert f"(default {PLAIN_BATCH})" in o["--batch-size"]
    o = options(render(capsys, "bench"))
    assert fast in o["--batch-size"]
    assert (f"(default {bench.PRECISIONS_CPU}; {bench.PRECISIONS_CUDA} on CUDA)"
            in o["--precisions"])
    o = options(render(capsys, "train"))
    for name, steps in train.STEPS_PRESET.items():
        assert f"{name} {steps}" in o["--steps"]
    assert f"default {train.DEFAULT_CONFIG}," in o["--config"]
    o = options(render(capsys, "calibrate"))
    assert f"[default: {calibrate.DEFAULT_IMAGES}]" in o["--num-images"]
    assert f"[default: {calibrate.DEFAULT_POINTS}]" in o["--points"]


@pytest.mark.parametrize("command", ["nll", "bench"])
def test_full_chain_is_the_default_where_it_is(command, capsys):
    """nll and bench do run the full chain without --steps (encode does not: above)."""
    assert "(default: the full chain)" in options(render(capsys, command))["--steps"]


# -- model-free lossless files: written and read without torch ---------------------------
MODEL_FREE = r"""
import json, sys
from ddpmcodec.cli import main
runs = [a.split("|") for a in sys.argv[2:]]
codes = [main(a) for a in runs]
heavy = [m for m in ("torch", "diffusers", "ddpmcodec.io.models") if m in sys.modules]
with open(sys.argv[1], "w") as f:
    json.dump({"codes": codes, "heavy": heavy}, f)
"""


def test_model_free_lossless_files_need_no_torch(tmp_path, embedded_model):
    """A one-image lossless file at the defaults (its classical file), --method classical and
    --method webp files of two images: encoded and decoded in a fresh interpreter that never
    imports torch or loads the model, to the same bytes as the codec writes with the model
    loaded, and back to the exact pixels."""
    from ddpmcodec.codec.api import get_codec
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    images[1] = images[1] // 16 * 16          # a compressible one beside a noisy one
    np.savez(tmp_path / "one.npz", images=images[1:])
    np.savez(tmp_path / "two.npz", images=images)
    cases = {"one": ("one.npz", []), "classical": ("two.npz", ["--method", "classical"]),
             "webp": ("two.npz", ["--method", "webp"])}
    argvs = []
    for name, (src, extra) in cases.items():
        argvs.append("|".join(["encode", src, "-o", f"{name}.ddpm", "--lossless", "-q", *extra]))
        argvs.append("|".join(["decode", f"{name}.ddpm", "-o", f"{name}_dec.npz", "-q"]))
    proc = subprocess.run([sys.executable, "-c", MODEL_FREE, "report.json", *argvs],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["codes"] == [0] * len(argvs) and report["heavy"] == [], report
    codec = get_codec("lossless")(embedded_model)
    for name, (src, extra) in cases.items():
        x = np.load(tmp_path / src)["images"]
        method = extra[1] if extra else "auto"
        assert (tmp_path / f"{name}.ddpm").read_bytes() == codec.encode(x, method=method).data
        assert np.array_equal(np.load(tmp_path / f"{name}_dec.npz")["images"], x)
