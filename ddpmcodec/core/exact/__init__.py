"""The exact network: a diffusers UNet2DModel evaluated in integer arithmetic, so that
its output is the same integers on every CPU, GPU, thread count, batch size, convolution
library and torch version (what a compressed file needs to decode anywhere).

* :mod:`.spec`: the number formats (``exact-v1``);
* :mod:`.functions`: elementary functions with machine-independent results;
* :mod:`.tables`: silu and the softmax's exp as integer tables;
* :mod:`.quantize`: config + float32 weights -> the plan of integer layers;
* :mod:`.unet`: the plan evaluated in float64 carriers with torch.
"""
