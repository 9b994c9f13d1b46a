"""The bundle's configs and metadata: MONAI's bundle tooling (offline), versions, and config hygiene."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import json
import re
from pathlib import Path

import monai
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.bundle.config_item import ComponentLocator

import ctmil
from ctmil.transforms import ToBagd, preprocessing_transforms

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil"
CONFIGS = BUNDLE / "configs"
TRAIN, META = str(CONFIGS / "train.json"), str(CONFIGS / "metadata.json")
SCHEMA = "configs/schema/meta_schema_20240725.json"
CONFIG_NAMES = ["train.json", "cv.json", "demo.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_inference.json"]


# ------------------------------------------------------------------------------------------------ bundle tooling
def test_verify_metadata_offline(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("verify_metadata tried to download the schema")

    monkeypatch.setattr("monai.apps.utils._download_with_progress", no_network)
    monkeypatch.setattr("monai.apps.utils.urlopen", no_network)
    monkeypatch.chdir(BUNDLE)
    verify_metadata(meta_file="configs/metadata.json", filepath=SCHEMA)
    # the check can fail: a metadata without network_data_format is rejected
    meta = json.loads(Path(META).read_text())
    del meta["network_data_format"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=SCHEMA)


def _install_requires() -> dict[str, str]:
    """``name -> version`` of setup.cfg's ``install_requires`` pins."""
    cfg = configparser.ConfigParser()
    cfg.read(BUNDLE.parents[1] / "setup.cfg")
    pins = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    return dict(pin.split("==") for pin in pins)


def test_metadata_versions_match_environment():
    meta = json.loads(Path(META).read_text())
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert meta["required_packages_version"]["ctmil"] == ctmil.__version__
    for name, version in meta["required_packages_version"].items():
        assert importlib.metadata.version(name) == version, name
    assert meta["version"] in meta["changelog"]
    assert meta["schema"].endswith(Path(SCHEMA).name)  # the shipped schema is the one the metadata names


def test_metadata_declares_every_pinned_dependency():
    """Every run-time dependency that ctmil pins (other than torch, monai, numpy, which have their own fields)
    is declared to the bundle at the same version."""
    meta = json.loads(Path(META).read_text())
    pinned = {k: v for k, v in _install_requires().items() if k not in ("torch", "monai", "numpy")}
    declared = {k: meta["required_packages_version"].get(k) for k in pinned}
    assert declared == pinned


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=TRAIN, device="cpu")
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="network_def", meta_file=META, config_file=TRAIN, device="cpu",
                          **{"_meta_#network_data_format#outputs#pred#num_channels": 2})


# ------------------------------------------------------------------------------------------------ config hygiene
def _load(*names: str) -> dict:
    return ConfigParser.load_config_files([str(CONFIGS / n) for n in names])


#: each variant and the configs it is merged over (as ``ctmil`` and the bundle README merge them)
VARIANTS = {"multi_gpu_train.json": ("train.json",), "multi_gpu_inference.json": ("inference.json",), "evaluate.json": ("inference.json",), "cv.json": ("train.json",),
            "demo.json": ("train.json", "cv.json")}


def _same_as_base(base: ConfigParser, key: str, value, found: list) -> list:
    """Ids where ``value`` repeats what ``base`` already holds at ``key`` (recursing into sections)."""
    try:
        old = base[key]
    except (KeyError, IndexError, ValueError, TypeError):
        return found
    if old == value:
        found.append(key)
    elif isinstance(old, dict) and isinstance(value, dict):
        for sub, v in value.items():
            _same_as_base(base, f"{key}#{sub}", v, found)
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_holds_only_differences(variant):
    diff = json.loads((CONFIGS / variant).read_text())
    base = ConfigParser(_load(*VARIANTS[variant]))
    assert diff, f"{variant} is empty"
    assert "imports" not in diff  # the variant reuses train.json's imports
    repeated = [found for key, value in diff.items() for found in _same_as_base(base, key, value, [])]
    assert not repeated, f"{variant} repeats values of {VARIANTS[variant]}: {repeated}"
    # overrides name ids, never list positions: reordering a list in train.json cannot silently retarget them
    by_index = [k for k in diff if any(part.isdigit() for part in k.split("#"))]
    by_index += re.findall(r"@[\w#]*#\d+\b", json.dumps(diff))
    assert not by_index, f"{variant} addresses list items by index: {by_index}"
    # a '#' override names an id that exists in what it is merged over (a typo would silently add a new key), or an
    # argument of a component there: the rule --set overrides are checked by
    from ctmil.bundle import check_override_ids

    for key in [k for k in diff if "#" in k and k.split("#")[0] in base.config]:
        try:
            check_override_ids([str(CONFIGS / n) for n in VARIANTS[variant]], {key: diff[key]})
        except ValueError as err:
            pytest.fail(f"{variant}: {err}")


def _walk(node, targets: list, expressions: list) -> None:
    if isinstance(node, dict):
        if "_target_" in node:
            targets.append(node["_target_"])
        for value in node.values():
            _walk(value, targets, expressions)
    elif isinstance(node, list):
        for value in node:
            _walk(value, targets, expressions)
    elif isinstance(node, str) and node.startswith("$"):
        expressions.append(node)


def _resolves(dotted: str) -> bool:
    """``a.b.c`` names a module, or an attribute chain below the longest importable module prefix."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        try:
            for attr in parts[n:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_targets_and_package_references_resolve(name):
    config = json.loads((CONFIGS / name).read_text())
    targets, expressions = [], []
    _walk(config, targets, expressions)
    expressions += [k for k in config if k.startswith("$")]
    locator = ComponentLocator()
    for target in targets:
        if "." in target:
            assert _resolves(target), f"{name}: _target_ {target} does not resolve"
        else:
            assert locator.get_component_module_name(target), f"{name}: _target_ {target} is not a MONAI component"
    for expr in expressions:
        for dotted in re.findall(r"(?<![\w.@])(?:ctmil|monai|torch)(?:\.\w+)+", expr):
            assert _resolves(dotted), f"{name}: {dotted} in {expr!r} does not resolve"
    if name in ("train.json", "inference.json"):
        assert targets or expressions, f"{name} names nothing to build"


def test_train_json_builds_every_preprocessing_setting_and_writes_none_of_their_values():
    """``train.json#preprocessing_args`` is built by ``preprocessing_settings``: it gives every keyword of
    ``preprocessing_transforms`` at its default, while the config writes no value of its own (each default has one
    home, in the code), and ``preprocessing_args#<setting>`` overrides one, as for any component."""
    from ctmil.bundle import check_override_ids
    from ctmil.transforms import preprocessing_settings

    raw = json.loads(Path(TRAIN).read_text())["preprocessing_args"]
    assert raw["_target_"] == "ctmil.transforms.preprocessing_settings"
    assert all(isinstance(v, str) and v[:1] in "@$" for k, v in raw.items() if not k.startswith("_")), raw
    parser = ConfigParser(ConfigParser.load_config_file(TRAIN))
    assert parser.get_parsed_content("preprocessing_args") == preprocessing_settings()
    check_override_ids([str(TRAIN)], {"preprocessing_args#max_slices": 30})
    parser.update({"preprocessing_args#max_slices": 30})
    assert parser.get_parsed_content("preprocessing_args") == preprocessing_settings(max_slices=30)


@pytest.mark.parametrize("files, channels, attention_channels, patch_norm", [
    (("train.json",), 2, 1, "both"),  # the default: two channels, attention scored on the min-max one
    (("train.json", "paper.json"), 1, None, "minmax"),  # the paper's network on its one min-max channel
])
def test_the_network_takes_the_channels_preprocessing_makes(files, channels, attention_channels, patch_norm):
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / n) for n in files]))
    settings, network = parser.get_parsed_content("preprocessing_args"), parser.get_parsed_content("network_def")
    assert settings["patch_norm"] == patch_norm and network.in_channels == channels
    assert network.hparams.get("attention_channels") == attention_channels
    chain = preprocessing_transforms(**settings)
    assert next(t for t in chain.transforms if isinstance(t, ToBagd)).patch_norm == patch_norm
    x = torch.rand(1, 12, channels, 60, 60)
    assert network.eval()(x).shape == (1, 1)
