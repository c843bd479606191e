"""Scene workers: decode, build and plan each session's updates off the I/O thread.

Inflating planes and planning a scene can take seconds on a huge canvas. A
small pool of worker threads does it, one request of a session at a time
and in the order the session sent them (``ordered.SessionOrder``: updates,
and ``generate``s, which render the scene as it stands after the updates
before them), so revisions are applied in order and each reply is all or
nothing. Meanwhile the I/O thread keeps answering everyone and the engine
keeps stepping every stream.

The memory a scene will keep is reserved (``MemoryBudget``) from its sizes
before any plane is decoded, and exactly once the scene is built.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from smd_daemon.engine.scene import Cancelled, Region, Scene, SceneError, UnknownControl
from smd_daemon.grammar import LayerInput, build_scene
from smd_daemon.protocol import ErrorCode, ProtocolError
from smd_daemon.scenestate import KEEP, SceneChange, SceneState
from smd_daemon.server import messages as m
from smd_daemon.server.images import FRAME_ENCODINGS, decode_plane
from smd_daemon.server.limits import SCENE_SETTINGS, Limits, scene_defaults
from smd_daemon.server.memory import MemoryBudget, frame_bytes
from smd_daemon.server.ordered import SessionOrder
from smd_daemon.server.ports import Planner

log = logging.getLogger("smd_daemon.server")

E = ErrorCode


@dataclass(eq=False)
class SceneSession:
    """One session's scene as its worker keeps it (workers only, one at a time)."""

    id: str
    state: SceneState = field(default_factory=SceneState)
    revision: int = 0
    scene: Scene | None = None  # the engine Scene of ``revision``
    plan: object = None  # its plan (the engine's, handed back to it unread), made when first needed
    closed: bool = False


class SceneWorkers:
    def __init__(
        self,
        engine: Planner,
        limits: Limits,
        budget: MemoryBudget,
        post,
        threads: int = 2,
        stopping: threading.Event | None = None,
    ):
        self.engine, self.limits, self.budget, self.post = engine, limits, budget, post
        self.stopping = stopping or threading.Event()
        self._order = SessionOrder(threads, "scene")
        self._defaults = scene_defaults()

    def submit(self, s: SceneSession, kind: str, msg, re, job_id: int | None = None) -> None:
        """Queue an ``update`` or ``generate`` of ``s`` (I/O thread); ``busy`` when too much waits."""
        lim = self.limits
        size = sum(len(p) for p in msg.parts)
        queued = self._order.submit(
            s.id,
            self._run,
            s,
            kind,
            msg,
            re,
            job_id,
            cost=size,
            max_tasks=lim.max_updates_queued,
            max_cost=2 * lim.max_message_bytes,
        )
        if not queued:
            waiting = len(self._order.waiting(s.id))
            raise ProtocolError(E.BUSY, f"{waiting} updates of this session are still being decoded: send fewer")

    def close(self, s: SceneSession) -> None:
        """The session is gone: drop what waits, and give back its memory once what runs is done."""
        s.closed = True
        if not self._order.drop(s.id) or not self._order.submit(s.id, self.budget.release, s.id):
            self.budget.release(s.id)  # nothing runs for it (or the daemon is stopping): now

    def shutdown(self) -> None:
        self._order.shutdown()

    def _run(self, s: SceneSession, kind: str, msg, re, job_id) -> None:
        if s.closed:
            return
        # A scene that another update replaces at once is never drawn: plan only the last.
        last = not any(args[1] == "update" for args in self._order.waiting(s.id))
        try:
            if kind == "update":
                done = self._update(s, msg, re, plan_now=last)
                self.post(done)
                if done.error is not None and last and s.scene is not None and s.plan is None:
                    self._plan_late(s)
            else:
                self.post(self._generate(s, msg, re, job_id))
        except Cancelled:  # the daemon is stopping, or the session closed: nobody waits for it
            pass
        except Exception as e:  # a bug must cost one request, not the session's worker
            log.exception("internal error building a scene")
            error = (E.INTERNAL, f"internal error: {type(e).__name__}: {str(e)[:200]}")
            self.post(
                m.UpdateDone(s.id, re, msg.header.get("revision", 0), error=error)
                if kind == "update"
                else m.JobReady(s.id, re, None, error + (job_id,))
            )

    # --- update ---------------------------------------------------------------

    def _update(self, s: SceneSession, msg, re, plan_now: bool) -> m.UpdateDone:
        revision = msg.header["revision"]
        old_bytes = self.budget.held(s.id)
        try:
            state, scene, parsed, nbytes = self._build(s, msg)
            self.budget.reserve(s.id, nbytes)
            plan = self._plan(s, scene) if plan_now else None
        except ProtocolError as e:
            self._restore(s, old_bytes)
            return m.UpdateDone(s.id, re, revision, error=(e.code, e.message))
        except UnknownControl as e:
            self._restore(s, old_bytes)
            return m.UpdateDone(s.id, re, revision, error=(E.UNKNOWN_CONTROL, str(e)))
        except SceneError as e:
            self._restore(s, old_bytes)
            return m.UpdateDone(s.id, re, revision, error=(E.BAD_SCENE, str(e)))
        s.state, s.revision, s.scene, s.plan = state, revision, scene, plan
        log.debug(
            "session %s keeps %.0f MiB (all sessions: %.0f of %.0f MiB)",
            s.id[:8],
            nbytes / 2**20,
            self.budget.used / 2**20,
            self.budget.total / 2**20,
        )
        return m.UpdateDone(s.id, re, revision, scene, plan, [p.to_dict() for p in parsed])

    def _plan_late(self, s: SceneSession) -> None:
        """The scene accepted before a refused update was never planned (a newer one
        was on its way): the engine draws it after all."""
        try:
            s.plan = self._plan(s, s.scene)
        except ProtocolError as e:
            log.error("session %s: revision %d cannot be drawn: %s", s.id[:8], s.revision, e)
            return
        self.post(m.PlanReady(s.id, s.scene, s.revision, s.plan))

    def _restore(self, s: SceneSession, old_bytes: int) -> None:
        try:
            self.budget.reserve(s.id, old_bytes)
        except ProtocolError:  # cannot happen: it held this much a moment ago
            pass

    def _build(self, s: SceneSession, msg):
        """Check, decode and build; returns (state, scene, parsed layers, bytes the session will keep)."""
        h, lim = msg.header, self.limits
        if h["revision"] <= s.revision:
            raise ProtocolError(E.STALE_REVISION, f"revision {h['revision']} is not newer than {s.revision}")
        change = SceneChange.from_header(h)
        w, h_ = s.state.next_size(change)
        settings = {**({} if change.full else s.state.settings), **change.settings}
        if len(change.layers) > lim.max_layers:
            raise ProtocolError(E.TOO_LARGE, f"{len(change.layers)} layers, at most {lim.max_layers} allowed")
        # Reserve what the session will keep before decoding anything, counting
        # every layer with a plane as a region (the engine's part from shapes alone),
        # and every control layer's picture at three bytes a pixel.
        n_new, new_bg = change.new_planes()
        kept = {c.key for c in change.layers}
        planes = n_new + (
            0
            if change.full
            else sum(1 for k, layer in s.state.layers.items() if k not in kept and layer.alpha is not None)
        )
        new_image = {c.key for c in change.layers if c.image is not KEEP}
        images = change.new_images() + (
            0
            if change.full
            else sum(1 for k, layer in s.state.layers.items() if k not in new_image and layer.image is not None)
        )
        has_bg = new_bg or (
            change.background_image is KEEP and not change.full and s.state.background_image is not None
        )
        shape = self._shape_scene(w, h_, min(planes, lim.max_regions), settings)
        # Size, steps and modes, the engine's rules and what the model can do: once, before any plane is decoded.
        self._check(shape)
        self.budget.reserve(
            s.id,
            (planes + 3 * images + 3 * has_bg) * w * h_ + self._frame_bytes(w, h_) + self.engine.session_bytes(shape),
        )
        change = change.resolve(
            alpha=lambda ref, c: decode_plane(
                msg.part(ref["part"]), ref.get("encoding", "raw"), w, h_, 1, f"layer {(c.name or c.key)[:60]!r} alpha"
            ),
            image=lambda ref: decode_plane(
                msg.part(ref["part"]), ref.get("encoding", "raw"), w, h_, 3, "background image"
            ),
            layer_image=lambda ref, c: decode_plane(
                msg.part(ref["part"]), ref.get("encoding", "raw"), w, h_, 3, f"layer {(c.name or c.key)[:60]!r} image"
            ),
        )
        state = s.state.apply(change, lim.max_layers)
        scene, parsed = self._scene(state)
        pixels = sum(
            pixels.nbytes
            for layer in state.layers.values()
            for pixels in (layer.alpha, layer.image)
            if pixels is not None
        )
        image = _background_image(state)
        if image is not None:
            pixels += image.nbytes
        return state, scene, parsed, pixels + self.engine.session_bytes(scene) + self._frame_bytes(w, h_)

    def _shape_scene(self, w: int, h: int, regions: int, settings: dict) -> Scene:
        """A scene with the sizes of the one an update will build, and no pixels."""
        nothing = np.broadcast_to(np.uint8(0), (h, w))  # zero-stride: no memory
        d = self._defaults
        return Scene(
            w,
            h,
            [Region("", nothing)] * regions,
            steps=settings.get("steps", d["steps"]),
            **{k: settings.get(k, d[k]) for k in SCENE_SETTINGS},
        )

    def _frame_bytes(self, w: int, h: int) -> int:
        return frame_bytes(self.limits.frame_window, w, h)

    def _scene(self, state: SceneState):
        lim, d = self.limits, self._defaults
        settings, bg = state.settings, state.background
        w, h = state.size
        inputs = [
            LayerInput(layer.name, layer.alpha, layer.visible, group=layer.group, image=layer.image)
            for layer in state.layers.values()
        ]
        scene, parsed = build_scene(
            inputs,
            w,
            h,
            background_prompt=bg.get("prompt", ""),
            negative_prompt=settings.get("negative_prompt", ""),
            background_image=_background_image(state),
            background_strength=bg.get("strength", d["background_strength"]),
            seed=settings.get("seed", d["seed"]),
            steps=settings.get("steps", d["steps"]),
            **{k: settings[k] for k in SCENE_SETTINGS if k in settings},
        )
        for text in [bg.get("prompt", ""), settings.get("negative_prompt", "")] + [p.prompt for p in parsed]:
            if len(text) > lim.max_prompt_chars:
                raise ProtocolError(
                    E.TOO_LARGE,
                    f"a prompt of {len(text)} characters: at most {lim.max_prompt_chars} allowed ({text[:40]!r}...)",
                )
        if len(scene.regions) > lim.max_regions:
            raise ProtocolError(E.TOO_MANY_REGIONS, f"{len(scene.regions)} regions, at most {lim.max_regions} allowed")
        scene.bootstrap_steps = min(scene.bootstrap_steps, scene.steps)
        scene.validate()  # what the settings' check before decoding could not see: the regions, the image
        return scene, parsed

    def _check(self, scene: Scene) -> None:
        """The engine's check of a scene's settings (``Engine.check``), as a wire error."""
        try:
            self.engine.check(scene)
        except UnknownControl as e:
            raise ProtocolError(E.UNKNOWN_CONTROL, str(e)) from None
        except SceneError as e:
            too_large = max(scene.width, scene.height) > self.limits.max_side  # which code, not whether
            raise ProtocolError(E.TOO_LARGE if too_large else E.BAD_FIELD, str(e)) from None

    def _plan(self, s: SceneSession, scene):
        # A plan of a huge canvas takes seconds: it stops when the daemon does.
        return plan_scene(self.engine, scene, cancel=lambda: self.stopping.is_set() or s.closed)

    # --- generate -------------------------------------------------------------

    def _generate(self, s: SceneSession, msg, re, job_id: int) -> m.JobReady:
        h = msg.header
        try:
            if s.scene is None:
                raise ProtocolError(E.NO_SCENE, "generate before any scene: send an update first")
            encoding = h.get("encoding", "png")
            if encoding not in FRAME_ENCODINGS:
                raise ProtocolError(E.BAD_FIELD, f"encoding {encoding} is not available here")
            scene, plan = s.scene, s.plan
            changes = {k: h[k] for k in ("steps", "seed") if k in h}
            if changes:
                scene = dataclasses.replace(scene, **changes)
                scene.bootstrap_steps = min(scene.bootstrap_steps, scene.steps)
                self._check(scene)
                plan = None
            if plan is None:
                plan = self._plan(s, scene)
                if not changes:
                    s.plan = plan
        except ProtocolError as e:
            return m.JobReady(s.id, re, None, (e.code, e.message, job_id))
        job = m.Job(job_id, scene, plan, s.revision, encoding, int(h.get("quality", 95)), re)
        return m.JobReady(s.id, re, job)


def plan_scene(engine: Planner, scene, cancel):
    """``engine.plan`` with its failures as the wire's errors (``ProtocolError``),
    for this request only; ``Cancelled`` passes through. A cluster's workers plan
    the same way."""
    try:
        return engine.plan(scene, cancel=cancel)
    except (ProtocolError, Cancelled):
        raise
    except UnknownControl as e:
        raise ProtocolError(E.UNKNOWN_CONTROL, str(e)) from None
    except SceneError as e:
        raise ProtocolError(E.BAD_SCENE, str(e)) from None
    except Exception as e:  # the engine cannot draw it (out of memory...)
        log.error("planning failed: %s: %s", type(e).__name__, e)
        raise ProtocolError(
            E.ENGINE_ERROR, f"the engine cannot draw this scene: {type(e).__name__}: {str(e)[:300]}"
        ) from None


def _background_image(state: SceneState) -> np.ndarray | None:
    """The scene's background image as the daemon holds it (``SceneState`` is shared with the plugin,
    which holds bytes there)."""
    image = state.background_image
    assert image is None or isinstance(image, np.ndarray), "the daemon applies changes decode_plane resolved"
    return image
