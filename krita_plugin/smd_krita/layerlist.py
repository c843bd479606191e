"""How every layer is read, for the docker's list: the daemon's reading of
each layer sent, plus what only the plugin knows (groups, its preview).
Pure logic (no Qt, no Krita)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .kritaapi import PREVIEW_NAME

GROUP_TEXT = "group: its layers are read one by one, as you see them"
FILTER_TEXT = "filter layer: never read (the background image has the layers below it unfiltered)"
PREVIEW_TEXT = "the live preview (never read)"


@dataclass
class Row:
    uid: str
    name: str
    parent: str  # uid of the enclosing group, "" at the top
    role: str  # "region", "background", "control", "ignored", "group", "filter", "preview" or "" (not read yet)
    code: str  # the daemon's reason_code for an ignored layer
    text: str  # how it is read, in words
    warnings: list = field(default_factory=list)


def describe(reading: dict) -> str:
    role = reading.get("role")
    if role == "region":
        text = f"region: {reading.get('prompt', '')}"
        if reading.get("negative_prompt"):
            text += f" (not: {reading['negative_prompt']})"
        return text
    if role == "background":
        return f"background: {reading.get('prompt', '')}"
    if role == "control":
        text = f"control layer: {reading.get('kind', '')}, strength {_number(reading.get('strength'), 1)}"
        start, end = _number(reading.get("start"), 0), _number(reading.get("end"), 1)
        if (start, end) != ("0", "1"):
            text += f", from {start} to {end} of the denoising"
        return text
    reason = reading.get("reason") or reading.get("reason_code") or "ignored"
    if reading.get("kind") and reading.get("reason_code") == "no_image":  # the plugin sends it next
        return f"control layer: {reading['kind']}, its picture on its way"
    if reading.get("kind"):  # a control layer left out (empty...): said as such
        return f"control layer ({reading['kind']}) left out: {reason}"
    return f"ignored: {reason}"


def _number(value, default) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{default:g}"


def rows(layers: list, reading_of, connected: bool, preview: bool = False) -> list[Row]:
    """Rows top to bottom as in Krita's layer docker, each group before its layers.

    ``layers``: kritaapi.Layer bottom to top (groups before their layers);
    ``reading_of(uid)``: the daemon's reading or None.
    """
    waiting = "being read…" if connected else "not read yet: connect to the daemon"
    children: dict[str, list] = {}
    for layer in layers:
        children.setdefault(layer.parent, []).append(layer)
    out: list[Row] = []
    if preview:
        out.append(Row("", PREVIEW_NAME, "", "preview", "", PREVIEW_TEXT))

    def emit(parent: str) -> None:
        for layer in reversed(children.get(parent, [])):
            if layer.is_group:
                out.append(Row(layer.uid, layer.name, layer.parent, "group", "group", GROUP_TEXT))
                emit(layer.uid)
                continue
            if layer.is_filter:
                out.append(Row(layer.uid, layer.name, layer.parent, "filter", "filter", FILTER_TEXT))
                continue
            reading = reading_of(layer.uid)
            if reading is None or reading.get("name") != layer.name:
                out.append(Row(layer.uid, layer.name, layer.parent, "", "", waiting))
                continue
            out.append(
                Row(
                    layer.uid,
                    layer.name,
                    layer.parent,
                    reading.get("role", ""),
                    reading.get("reason_code", ""),
                    describe(reading),
                    list(reading.get("warnings", [])),
                )
            )

    emit("")
    return out
