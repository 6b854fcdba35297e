"""Which served model answers a request: by its ``model`` field, else the first model of the kind the endpoint needs.

One server may serve several models (``hftool serve --model a --model b``); each is of one kind, and each kind has
its endpoints. An unknown name is a 404 naming the served ones; a model of another kind is a 400 naming the
endpoint that fits it.
"""

from __future__ import annotations

from hftool.errors import HftoolError
from hftool.serve.errors import ApiError

# Each kind of model, what it is called in messages, and the endpoints that serve it.
KINDS = {
    "generate": ("causal language model", "POST /v1/completions or /v1/chat/completions"),
    "qa": ("extractive question-answering model", "POST /v1/qa"),
    "classify": ("sequence-classification model", "POST /v1/classify"),
    "tag": ("token-classification model", "POST /v1/tag"),
    "embed": ("encoder", "POST /v1/embeddings"),
}


def split_model_arg(value: str) -> tuple[str, str]:
    """``NAME=PATH`` names a model; a plain folder, Hub id or alias is named as given."""
    name, sep, path = value.partition("=")
    if sep and name and path and "/" not in name and "\\" not in name:
        return name, path
    return value, value


class Registry:
    """The served models by name, in the order given; the first of a kind answers requests that name none."""

    def __init__(self, served: list):
        self.served = list(served)
        self.check_names([item.name for item in self.served])
        self.by_name = {item.name: item for item in self.served}

    @staticmethod
    def check_names(names: list[str]) -> None:
        """Each served model needs a name of its own, for requests to pick it by."""
        twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if twice is not None:
            raise HftoolError(f"--model: two models are named '{twice}'; name them apart with --model NAME=PATH")

    def names(self) -> str:
        return ", ".join(f"'{item.name}'" for item in self.served)

    def pick(self, model: str | None, kind: str):
        """The served model a request for ``kind`` (a key of :data:`KINDS`) goes to."""
        if model is None:
            found = next((item for item in self.served if item.kind == kind), None)
            if found is None:
                raise ApiError(400, f"no {KINDS[kind][0]} is served here for {KINDS[kind][1]}; this server serves "
                               f"{self.described()}", "model", "wrong_endpoint")
            return found
        found = self.by_name.get(model)
        if found is None:
            raise ApiError(404, f"model '{model}' is not served here; this server serves {self.names()}", "model",
                           "model_not_found", kind="not_found_error")
        if found.kind != kind:
            fits = f": use {KINDS[found.kind][1]}" if found.kind else ""
            raise ApiError(400, f"{found.name} is {self.article(found.kind)}; {KINDS[kind][1]} needs "
                           f"{self.article(kind)}{fits}", "model", "wrong_endpoint")
        return found

    @staticmethod
    def article(kind: str | None) -> str:
        what = KINDS[kind][0] if kind else "model without an endpoint"
        return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"

    def described(self) -> str:
        return "; ".join(f"'{item.name}' ({KINDS[item.kind][0]}: {KINDS[item.kind][1]})" if item.kind
                         else f"'{item.name}'"
                         for item in self.served)
