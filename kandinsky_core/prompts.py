"""What every text input of the pack does with a prompt that is not valid Unicode.

A Python str can hold lone UTF-16 surrogates (U+D800-U+DFFF): a JSON "\\ud800", or half of an emoji cut by a browser
paste. No UTF-8 text exists for them, so the tokenizers' native code refuses them with a raw error. Every tokenizer
call in kandinsky_core takes its text through `encodable` first: a surrogate pair written as two characters becomes the
character it encodes, and a lone surrogate becomes U+FFFD, the replacement character a tokenizer fed bytes would
decode it to. The rest of the prompt is untouched, so any Python string encodes.
`prompt_list` is how the pipelines read a prompt argument: one string or a list of them.
"""
from .errors import KandinskyError

REPLACEMENT = "\ufffd"


def encodable(text):
    """`text` with lone surrogates replaced by U+FFFD and split surrogate pairs joined; other strings unchanged."""
    try:
        text.encode("utf-8")
        return text  # the common case: valid Unicode, returned as it is
    except UnicodeEncodeError:
        pass
    # UTF-16 can carry surrogates ("surrogatepass"); decoding it back pairs what pairs and replaces what does not.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def prompt_list(prompt, what):
    """A prompt argument (a string or a non-empty list of strings) as a list; `what` names it in the error."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise KandinskyError(f"{what} must be a string or a non-empty list of strings, got {prompt!r}.")
    return prompts
