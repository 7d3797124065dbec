"""Sample a pipeline with an adapter loaded from its diffusers file, then from its kohya file."""

from sdtune.formats import load_adapter
from sdtune.formats.adapters import remove_adapter


def through_both_layouts(pipe, out, kohya_file, sample):
    """(images with `pipe.load_lora_weights(out)`, images with `load_adapter(pipe, kohya_file)`); the pipeline
    is left without adapters."""
    pipe.load_lora_weights(out)
    from_diffusers = sample(pipe)
    pipe.unload_lora_weights()
    load_adapter(pipe, kohya_file, "k")
    from_kohya = sample(pipe)
    remove_adapter(pipe, "k")
    return from_diffusers, from_kohya
