"""Textual Inversion (Gal et al. 2022): learn a new word, not new weights.

A placeholder token S* is added to the tokenizer and given its own row v* in the text encoder's
embedding table. Everything else stays frozen; only v* is optimised with the ordinary diffusion loss:

    v* = argmin_v  E_{z, c, eps, t} || eps - eps_theta(z_t, t, c_theta("a photo of S*")) ||^2

With K vectors the token stands for K embedding rows ("S*", "S*_1", ... "S*_{K-1}", the diffusers
convention; the pipeline writes "S*" out as all K tokens): more capacity, usually less editability. The new rows start as the embedding of an
initializer word (a coarse description such as "star"). After every optimizer step all other rows are
copied back, so the rest of the vocabulary is bit-identical to the base model's.

Files: `learned_embeds.safetensors` ({token: K x d}, read by `pipe.load_textual_inversion(path, token=...)`)
and `<name>.safetensors` ({"emb_params": K x d}, the layout kohya writes and the A1111 WebUI and ComfyUI read;
the file name is the word used in a WebUI prompt).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..io import read_safetensors, staged_file
from .trainable import Trainable

DIFFUSERS_FILE = "learned_embeds.safetensors"
KOHYA_KEY = "emb_params"


def placeholder_tokens(token: str, vectors: int) -> list[str]:
    """The tokens a K-vector placeholder occupies: token, token_1, ..., token_{K-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def check_token(tokenizer, token: str, init_word: str) -> int:
    """Refuse a placeholder the model already knows and an initializer word that is not one token; returns
    the initializer's token id."""
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--token {token!r}: the placeholder must be one word without spaces, e.g. '<my-toy>'.")
    pieces = tokenizer.tokenize(token)
    if token in tokenizer.get_vocab() or (len(pieces) == 1 and pieces[0] in tokenizer.get_vocab()):
        raise ValueError(
            f"--token {token!r} is already a word of the tokenizer's vocabulary: training it would change what that "
            f"word means everywhere. Choose a new string, e.g. '<{token.strip('<>')}-ti>'."
        )
    ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not init_word or len(ids) != 1:
        raise ValueError(
            f"--init-word {init_word!r} is {len(ids)} tokens ({tokenizer.tokenize(init_word)}): the initializer must be "
            "a single known token, a coarse word for the concept such as 'star' or 'toy'."
        )
    return ids[0]


class PlaceholderEmbedding:
    """New embedding rows for a placeholder token in a pipeline's (first) text encoder, and their training."""

    def __init__(self, pipe, token: str, init_word: str, vectors: int = 1) -> None:
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise ValueError("Textual Inversion in sdtune trains SD 1.x/2.x embeddings (one text encoder); this is an SDXL pipeline.")
        init_id = check_token(pipe.tokenizer, token, init_word)
        self.pipe, self.token, self.vectors = pipe, token, vectors
        self.tokens = placeholder_tokens(token, vectors)
        pipe.tokenizer.add_tokens(self.tokens)
        self.ids = pipe.tokenizer.convert_tokens_to_ids(self.tokens)
        encoder = pipe.text_encoder
        encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)  # the new rows are set just below
        self.weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            self.weight[self.ids] = self.weight[init_id].clone()  # v* starts at the initializer word
        self.original = self.weight.detach().clone()
        self.frozen_rows = torch.ones(len(self.weight), dtype=torch.bool)
        self.frozen_rows[self.ids] = False

    @torch.no_grad()
    def restore_other_rows(self) -> None:
        """Copy the base vocabulary back after an optimizer step (weight decay and Adam touch every row)."""
        self.weight[self.frozen_rows] = self.original[self.frozen_rows].to(self.weight.dtype)

    def learned(self) -> torch.Tensor:
        """The K x d learned vectors."""
        return self.weight[self.ids].detach().float().cpu().contiguous()

    def remove(self) -> None:
        remove_embedding(self.pipe, self.token)


def save_embedding(vectors: torch.Tensor, token: str, folder: Path, name: str, metadata: dict[str, str]) -> list[Path]:
    """Write the diffusers file and the kohya/A1111 file, each atomically."""
    written = [folder / DIFFUSERS_FILE, folder / f"{name}.safetensors"]
    for path, key in zip(written, (token, KOHYA_KEY)):
        with staged_file(path) as tmp:
            save_file({key: vectors}, str(tmp), metadata=metadata)
    return written


def read_embedding(path: str | Path) -> tuple[str | None, torch.Tensor]:
    """(token or None, K x d vectors) from a diffusers or kohya/A1111 embedding file (safetensors)."""
    path = Path(path)
    if path.is_dir():
        path = path / DIFFUSERS_FILE
    tensors, _ = read_safetensors(path, "embedding")
    if len(tensors) != 1:
        raise ValueError(f"{path} holds {len(tensors)} tensors ({', '.join(list(tensors)[:4])}); an SD 1.x/2.x embedding holds one.")
    key, vectors = next(iter(tensors.items()))
    return (None if key == KOHYA_KEY else key), vectors.reshape(-1, vectors.shape[-1])


def load_embedding(pipe, path: str | Path, token: str | None = None) -> str:
    """Add a learned embedding to `pipe` under `token` (default: the token stored in the file); returns the token.

    Checks the vector width against the text encoder first: an SD 1.x embedding (768) does not fit SD 2.x (1024).
    """
    stored, vectors = read_embedding(path)
    token = token or stored
    if token is None:
        raise ValueError(f"{path} does not name its token (kohya/A1111 layout): pass token=..., e.g. the file name.")
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if vectors.shape[1] != width:
        raise ValueError(
            f"{path} holds {vectors.shape[1]}-wide vectors but this model's text encoder is {width} wide: "
            "the embedding was trained for another base model."
        )
    pipe.load_textual_inversion({token: vectors}, token=token)
    return token


def remove_embedding(pipe, token: str) -> None:
    """Take a (multi-vector) token out of the tokenizer and its rows out of the text encoder."""
    added = pipe.tokenizer.added_tokens_encoder
    pipe.unload_textual_inversion([t for t in added if t == token or (t.startswith(f"{token}_") and t[len(token) + 1:].isdigit())])
    # diffusers' unloader shrinks the table but not the config, which save_pretrained would then write wrong
    pipe.text_encoder.config.vocab_size = pipe.text_encoder.get_input_embeddings().num_embeddings


class TextualInversionTraining(Trainable):
    """The embedding rows of a new token; the text encoder runs on every batch so that the gradient reaches them."""

    def attach(self, pipe, copy_weights: bool):
        cfg = self.cfg
        # the text encoder runs in float32 while its new rows train (as diffusers' textual_inversion.py keeps it): a
        # float32 row in a half-precision table would meet half weights in every layer after the embedding
        self.embedding = PlaceholderEmbedding(pipe, cfg.token, cfg.init_word, cfg.vectors)  # checks the token first
        self.dtype = pipe.text_encoder.dtype
        pipe.text_encoder.float()  # in place: the embedding's weight stays the same parameter
        self.embedding.weight.requires_grad_(True)
        self.unet, self.text_encoders = pipe.unet, [pipe.text_encoder]
        return pipe

    def after_step(self) -> None:
        self.embedding.restore_other_rows()  # only the new token's rows may change

    def save(self, pipe, folder: Path, name: str, resolution: int) -> None:
        cfg = self.cfg
        save_embedding(self.embedding.learned(), cfg.token, folder, cfg.token.strip("<>") or name,
                       {"token": cfg.token, "init_word": cfg.init_word, "steps": str(cfg.steps)})

    def detach(self, pipe) -> None:
        self.embedding.remove()
        pipe.text_encoder.to(self.dtype)
