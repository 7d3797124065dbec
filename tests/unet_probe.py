"""One fixed UNet call (seeded latent, timestep 300, random text context): compares what adapters do to the UNet."""

import torch


def unet_out(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=g)
    c = torch.randn(1, 7, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([300]), c).sample
