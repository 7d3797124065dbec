"""Adapter files: the diffusers/peft layout and the kohya / A1111 / ComfyUI layout (with LyCORIS's keys).

`load_adapter(pipe, path)` reads either into a pipeline (LoHa and LoKr too, which diffusers refuses);
`save_adapter` writes both; `convert_file` turns one into the other.
"""

from .adapters import AdapterFileError, convert_file, load_adapter, read_adapter_file, save_adapter

__all__ = ["AdapterFileError", "convert_file", "load_adapter", "read_adapter_file", "save_adapter"]
