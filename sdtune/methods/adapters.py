"""Any peft adapter kind (LoRA, LoCon, DoRA: `lora.py`; LoHa, LoKr: `lycoris.py`) as the thing a run trains.

The adapter is added to the UNet (and, with train_text_encoder, to every text encoder) under the name "sdtune",
saved in the kohya/A1111/ComfyUI layout (and diffusers' for the LoRA family), and removed afterwards, so a caller's
pipeline comes back as it was.
"""

from __future__ import annotations

from pathlib import Path

from ..formats.adapters import add_adapter, remove_adapter, save_adapter
from ..formats.kohya import adapter_metadata
from . import adapter_config
from .trainable import Trainable, trained_text_encoders

ADAPTER = "sdtune"  # the name the adapter being trained has inside the pipeline


class PeftAdapterTraining(Trainable):
    """LoRA, LoCon, DoRA (`lora.py`), LoHa, LoKr (`lycoris.py`): a peft adapter on the UNet (and the text encoders)."""

    def attach(self, pipe, copy_weights: bool):
        cfg = self.cfg
        self.unet, self.text_encoders = pipe.unet, trained_text_encoders(pipe, cfg)
        spec = (cfg.adapter, cfg.rank, cfg.resolved_alpha, cfg.targets)
        add_adapter(pipe.unet, adapter_config(*spec, "unet", cfg.block_list(pipe.unet), cfg.lokr_factor), ADAPTER)
        for te in self.text_encoders:
            add_adapter(te, adapter_config(*spec, "text_encoder", lokr_factor=cfg.lokr_factor), ADAPTER)
        return pipe

    def save(self, pipe, folder: Path, name: str, resolution: int) -> None:
        cfg = self.cfg
        meta = adapter_metadata(pipe, cfg.adapter, cfg.rank, cfg.resolved_alpha, cfg.targets, cfg.lokr_factor,
                                {"ss_steps": cfg.steps, "ss_learning_rate": cfg.lr, "ss_output_name": name,
                                 "ss_resolution": f"({resolution}, {resolution})"})
        save_adapter(pipe, folder, ADAPTER, cfg.adapter, name, meta)

    def detach(self, pipe) -> None:
        remove_adapter(pipe, ADAPTER)
