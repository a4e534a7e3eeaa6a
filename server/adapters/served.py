"""Which adapters a server serves: ``ServedAdapters``, the ``adapters`` section of its settings.

The in-process server, ``cbpt-server info``, every Ray replica, the tests and the benchmarks ask
this one object; its docstring is the answer. It imports no torch, so settings validate it before
the model loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from cbpt.server.adapters.placement import Placement
from cbpt.server.adapters.spec import AdapterSpec, build_adapters
from cbpt.server.errors import GeneratorFormatError

if TYPE_CHECKING:
    from cbpt.server.adapters.base import Adapter
    from cbpt.server.model import ModelBundle

log = logging.getLogger(__name__)

# Generators trained by the provider, shipped as package data: one folder per domain.
SHIPPED_GENERATORS = Path(__file__).resolve().parents[1] / "generators"


class Chosen(NamedTuple):
    specs: list[AdapterSpec]  # served, in this order
    not_served: tuple[tuple[str, str], ...]  # shipped generators left out: (folder name, why)


class ServedAdapters(BaseModel):
    """Which adapters a server serves, in this order:

    1. ``specs`` (the settings file's ``adapters: {specs: [...]}``), or when there are none the
       defaults: zero-shot (``none``) and BBT with its prompt before the text (``bbt``, the paper),
       before the answer cue (``bbt-suffix``) and on the cue (``bbt-cue``), each with
       ``bbt_dimension``, ``prompt_length`` and ``projection_seed``;
    2. one ``cbp`` adapter per ``--generator`` folder, named ``cbp-<domain>`` (one trained for
       other weights is a mistake, refused when the adapters are built);
    3. with ``shipped_generators``, every generator shipped in the package
       (``server/generators/<domain>/``) trained for the loaded weights and not named above; one
       for other weights, or unreadable, is skipped, logged, and listed as not served with why
       (``cbpt-server info``): the server may run any model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bbt_dimension: int = Field(500, ge=1, description="dimension of BBT candidate vectors")
    prompt_length: int = Field(10, ge=1, description="soft-prompt vectors the BBT adapters insert")
    projection_seed: int = Field(0, description="seed of the BBT random projection")
    generators: list[Path] = Field(
        default_factory=list,
        description="a trained CBP generator folder, served as cbp-<domain> (repeatable)",
        json_schema_extra={"flag": "--generator"},
    )
    shipped_generators: bool = Field(
        True, description="serve the package's generators trained for this model (cbp-opinion, ...)"
    )
    specs: list[AdapterSpec] = Field(
        default_factory=list,
        description="adapter specs to serve instead of the defaults; settings file only",
        json_schema_extra={"cli": False},
    )

    def chosen(self, fingerprint: str, hidden_size: int | None = None) -> Chosen:
        """The specs served on weights with this fingerprint, and the shipped generators left out."""
        chosen = list(self.specs) or self._defaults()
        chosen += [AdapterSpec(method="cbp", generator=Path(folder)) for folder in self.generators]
        if not self.shipped_generators:
            return Chosen(chosen, ())
        shipped, skipped = _scan_shipped(SHIPPED_GENERATORS, fingerprint, hidden_size)
        given = {Path(spec.generator).resolve() for spec in chosen if spec.generator is not None}
        chosen += [spec for spec in shipped if Path(spec.generator or "").resolve() not in given]
        return Chosen(chosen, skipped)

    def build(self, bundle: ModelBundle) -> list[Adapter]:
        """The served adapters built on ``bundle`` (tests and benchmarks; the engine takes ``chosen``)."""
        return build_adapters(bundle, self.chosen(bundle.fingerprint, bundle.hidden_size).specs)

    def _defaults(self) -> list[AdapterSpec]:
        bbt = {
            "method": "bbt",
            "dimension": self.bbt_dimension,
            "prompt_length": self.prompt_length,
            "seed": self.projection_seed,
        }
        return [
            AdapterSpec(method="none"),
            AdapterSpec(name="bbt", placement=Placement.PREFIX, **bbt),
            AdapterSpec(name="bbt-suffix", placement=Placement.BEFORE_CUE, **bbt),
            AdapterSpec(name="bbt-cue", placement=Placement.ON_CUE, **bbt),
        ]


def _scan_shipped(
    folder: Path, fingerprint: str, hidden_size: int | None
) -> tuple[list[AdapterSpec], tuple[tuple[str, str], ...]]:
    """(specs served, (folder name, why not) of each skipped): every subfolder holding a generator file."""
    from cbpt.server.adapters.generator import CONFIG_FILE, WEIGHTS_FILE, mismatch, read_config

    specs: list[AdapterSpec] = []
    skipped: list[tuple[str, str]] = []
    found = {path.parent for name in (CONFIG_FILE, WEIGHTS_FILE) for path in folder.glob(f"*/{name}")}
    for generator in sorted(found):
        try:
            reason = mismatch(read_config(generator), fingerprint, hidden_size)
            code = "other-model"
        except GeneratorFormatError as error:
            reason, code = str(error).removeprefix(f"{generator}: "), "unreadable"
        if reason is None:
            specs.append(AdapterSpec(method="cbp", generator=generator))
            continue
        skipped.append((generator.name, reason))
        log.warning(
            "shipped generator not served",
            extra={"generator": generator.name, "reason": code, "fingerprint": fingerprint[:16]},
        )
    return specs, tuple(skipped)
