"""Import a reference release from its own checkout, outside the project, patching at run time
only what keeps it from running here (a hard-coded ``"cuda"``, a transformers 5 output layout).

The checkout's folder goes first on ``sys.path`` for the body of :func:`reference_modules`, and
the listed modules are compiled from their source with exact text replacements, each of which
must occur as often as stated (so a changed checkout fails loudly instead of running unpatched).
On exit the reference's top-level packages leave ``sys.modules`` again, so two releases with
packages of the same names (kmeng01/rome and kmeng01/memit both ship ``rome`` and ``util``) can
run one after the other in one process. Nothing of the reference is copied into the project.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """Replace ``old`` by ``new`` in a module's source; ``old`` must occur ``count`` times."""

    old: str
    new: str
    count: int
    why: str


OUR_PACKAGES = ("remedi", "benchmarks", "scripts", "tests")
"""Our top-level packages: a reference package of the same name cannot be imported beside them."""


class ReferenceCheckoutError(RuntimeError):
    """The reference checkout is missing a file, or a patch no longer applies to it."""


def cuda_to_cpu(count: int) -> Patch:
    """The reference's hard-coded ``"cuda"`` device (``count`` occurrences) made ``"cpu"``."""
    return Patch('"cuda"', '"cpu"', count, 'hard-coded device "cuda" -> "cpu"')


def patched_source(path: Path, patches: Sequence[Patch]) -> str:
    """The source of ``path`` with ``patches`` applied in order (in memory; the file is not
    touched).

    Raises:
        ReferenceCheckoutError: A patch's text does not occur exactly ``count`` times.
    """
    source = path.read_text()
    for patch in patches:
        found = source.count(patch.old)
        if found != patch.count:
            raise ReferenceCheckoutError(
                f"patch {patch.old!r} -> {patch.new!r} ({patch.why}) should occur "
                f"{patch.count} times in {path} but occurs {found} times: the checkout "
                "is not the revision this harness was written for"
            )
        source = source.replace(patch.old, patch.new)
    return source


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module from its source with :class:`Patch` replacements (never from a cache)."""

    def __init__(self, fullname: str, path: str, patches: Sequence[Patch]):
        super().__init__(fullname, path)
        self.patches = tuple(patches)

    def get_code(self, fullname: str) -> Any:
        source = patched_source(Path(self.path), self.patches)
        return compile(source, self.path, "exec", dont_inherit=True)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path, patches: Mapping[str, Sequence[Patch]]):
        self.root = root
        self.patches = patches

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.patches:
            return None
        base = self.root / fullname.replace(".", "/")
        package = (base / "__init__.py").is_file()
        file = base / "__init__.py" if package else base.with_suffix(".py")
        loader = _PatchingLoader(fullname, str(file), self.patches[fullname])
        return importlib.util.spec_from_file_location(
            fullname,
            file,
            loader=loader,
            submodule_search_locations=[str(base)] if package else None,
        )


@contextlib.contextmanager
def reference_modules(
    root: Path,
    packages: Sequence[str],
    patches: Mapping[str, Sequence[Patch]],
    required: Sequence[str] = (),
) -> Iterator[None]:
    """Make the release checked out at ``root`` importable (with :func:`load`) for the body,
    whose prints go to this module's debug log.

    Args:
        packages: The release's top-level packages (purged from ``sys.modules`` before and after).
        patches: Text replacements by module name (``"rome.compute_v"``).
        required: Files (relative to ``root``) whose absence means ``root`` is not the release.

    Raises:
        ReferenceCheckoutError: ``root`` lacks a required file, or one of our packages' names clashes.
    """
    root = root.resolve()
    clashes = sorted(set(packages) & set(OUR_PACKAGES))
    if clashes:
        raise ReferenceCheckoutError(
            f"the reference's packages {clashes} have the names of ours: run that release in its "
            "own process (its remedi package would shadow ours)"
        )
    for relative in required:
        if not (root / relative).is_file():
            raise ReferenceCheckoutError(
                f"{root} does not look like the reference checkout: {relative} is missing "
                "(pass the folder of a git checkout of the release)"
            )
    for module, module_patches in patches.items():
        for patch in module_patches:
            logger.info("patching %s at run time: %s", module, patch.why)

    def purge() -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in packages:
                del sys.modules[name]

    purge()
    chatter = io.StringIO()  # the references print progress; keep it out of the table
    finder = _PatchingFinder(root, patches)
    sys.path.insert(0, str(root))
    sys.meta_path.insert(0, finder)
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    finally:
        logger.debug("the reference printed:\n%s", chatter.getvalue())
        sys.dont_write_bytecode = dont_write_bytecode
        sys.meta_path.remove(finder)
        sys.path.remove(str(root))
        purge()


def load(name: str) -> Any:
    """Import reference module ``name`` (inside :func:`reference_modules`), typed ``Any``."""
    return importlib.import_module(name)


def patch_summary(patches: Mapping[str, Sequence[Patch]]) -> list[str]:
    """One line per patch: ``module: why (n x)``."""
    return [
        f"{module}: {patch.why} ({patch.count}x)"
        for module, module_patches in patches.items()
        for patch in module_patches
    ]
