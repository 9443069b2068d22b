"""The JSON documents a workspace holds at its top, by name: where each lives, the command that
writes it, the keys every version of it has had (what a reader may rely on), and one read /
write pair, so no module spells a file name again. Writes are atomic (core.io); a document
without its keys, or not JSON at all, is an error naming the file and the command that remakes
it, never a KeyError deep in a page. core.workspace documents the folders (features, adapters,
eval, logs); adapters keep their own grouptune.json (core.train.trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import GroupTuneError


@dataclass(frozen=True)
class Artifact:
    parts: tuple[str, ...]  # the path below the workspace root
    made_by: str  # the `grouptune` command that writes it
    keys: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "/".join(self.parts)

    def path(self, ws) -> Path:
        return ws.path(*self.parts)

    def exists(self, ws) -> bool:
        return self.path(ws).is_file()

    def read(self, ws) -> dict | None:
        """The document, or None before its command ran."""
        try:
            doc = ws.read(*self.parts)
        except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
            raise self._error(ws, f"is not a JSON document ({err})") from None
        if doc is not None:
            self._check(ws, doc, "holds")
        return doc

    def need(self, ws) -> dict:
        """The document; an error saying which command makes it when it is not there yet."""
        doc = self.read(ws)
        if doc is None:
            raise GroupTuneError(
                f"{self.path(ws)} is missing: run `grouptune {self.made_by} --workspace "
                f"{ws.root}` first."
            )
        return doc

    def write(self, ws, doc: dict) -> Path:
        self._check(ws, doc, "would hold")
        return ws.write(doc, *self.parts)

    def _check(self, ws, doc, verb: str) -> None:
        missing = [k for k in self.keys if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise self._error(ws, f"{verb} no {', '.join(map(repr, missing))}")

    def _error(self, ws, what: str) -> GroupTuneError:
        return GroupTuneError(
            f"{self.path(ws)} {what}; `grouptune {self.made_by} --workspace {ws.root}` makes it "
            "again"
        )


SUBSETS = Artifact(("estimates", "subsets.json"), "affinity", ("subsets",))
AFFINITY = Artifact(("affinity.json",), "affinity", ("tasks", "affinity"))
SWEEP = Artifact(("groupings", "sweep.json"), "group --sweep", ("entries",))
CHOSEN = Artifact(("groupings", "chosen.json"), "group", ("groups",))
MANIFEST = Artifact(
    ("ensemble.json",),
    "train",
    ("base_model", "adapters", "groups", "task_to_group", "weights", "weights_kind"),
)
VALIDATION = Artifact(("validation.json",), "validate-estimate", ("summary",))
REPORT = Artifact(("report.json",), "report", ("tasks",))
RUN = Artifact(("run.json",), "run", ("wall_seconds",))
ALL = (SUBSETS, AFFINITY, SWEEP, CHOSEN, MANIFEST, VALIDATION, REPORT, RUN)
