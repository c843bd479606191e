"""Krita actions (Tools > Scripts, and shortcuts): live toggle, generate, apply, and the swap of
what the canvas shows (a key can be given to each in Settings > Configure Krita > Keyboard Shortcuts)."""

from __future__ import annotations

from krita import Extension

from . import live

ACTIONS = (
    ("smd_live_toggle", "SMD Live: toggle live preview", lambda c: c.set_live(not c.live)),
    ("smd_generate", "SMD Live: generate once", lambda c: c.generate()),
    ("smd_apply", "SMD Live: apply result as a new layer", lambda c: c.apply()),
    ("smd_show_swap", "SMD Live: show both, the preview, the painting", lambda c: c.swap_show()),
)


class SMDExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        for name, text, fn in ACTIONS:
            action = window.createAction(name, text, "tools/scripts")
            action.triggered.connect(lambda _=False, fn=fn: fn(live.controller()))
