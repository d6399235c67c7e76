"""Which dataset a `--data` argument names beyond the CVUSA layout: CVACT or VIGOR folders."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from model.config import Preprocessing
from model.cvact import CVACTDataset, is_cvact_root
from model.data import DatasetError, PairDataset, PairOptions
from model.vigor import VigorDataset, is_vigor_root, parse_data_spec


def open_protocol_dataset(
    data: str | Path, split: str, prep: Preprocessing, **options: Unpack[PairOptions]
) -> PairDataset | None:
    """The CVACT or VIGOR dataset that `data` names, or None for any other folder.

    `data`: a folder holding ACT_data.mat (CVACT, `model.cvact`), or a VIGOR folder
    (splits/<City>/satellite_list.txt, `model.vigor`), the latter optionally followed by
    `@same-area` (the default) or `@cross-area`. `options` go to the dataset (augment, seed...).
    """
    path, protocol = parse_data_spec(data)
    if is_cvact_root(path):
        if protocol is not None:
            raise DatasetError(f"@{protocol} applies to VIGOR folders; {path} is a CVACT folder")
        return CVACTDataset(path, split, prep, **options)
    if is_vigor_root(path):
        return VigorDataset(path, split, protocol or "same-area", prep, **options)
    if protocol is not None:
        raise DatasetError(f"@{protocol} applies to VIGOR folders; {path} is not one (splits/<City>/)")
    return None
