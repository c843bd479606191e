"""Krita actions (Tools > Scripts, and shortcuts): live toggle, generate, apply."""

from __future__ import annotations

from krita import Extension

from . import live

ACTIONS = (
    ("smd_live_toggle", "SMD Live: toggle live preview", lambda c: c.set_live(not c.live)),
    ("smd_generate", "SMD Live: generate once", lambda c: c.generate()),
    ("smd_apply", "SMD Live: apply result as a new layer", lambda c: c.apply()),
)


class SMDExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        for name, text, fn in ACTIONS:
            action = window.createAction(name, text, "tools/scripts")
            action.triggered.connect(lambda _=False, fn=fn: fn(live.controller()))
