from transformers import CLIPTokenizer

from sdtune.data import toyworld


def test_the_tokenizer_folder_is_a_clip_tokenizer_with_vocab_and_merges(tiny_path):
    folder = tiny_path / "tokenizer"
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    tok = CLIPTokenizer.from_pretrained(folder)
    assert tok.model_max_length == 32


def test_toy_words_are_single_tokens_and_any_string_tokenizes_without_unk(tiny_path):
    tok = CLIPTokenizer.from_pretrained(tiny_path / "tokenizer")
    for values in toyworld.ATTRIBUTES.values():
        for word in values:
            assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    for text in ("a qzx toy", "<my-placeholder>", "ümlaut 東京 🙂"):
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids and tok.unk_token_id not in ids
    # different unknown words give different tokens (no shared <unk>)
    assert tok("qzx").input_ids != tok("vbj").input_ids
