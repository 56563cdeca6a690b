"""Data layer: readers of QM9, MD17/rMD17/MD22, OC20 and any ASE file into one Structure record,
the network batch (:func:`collate`), a prepared memory-mapped format, downloads and statistics.

Canonical units: Å, eV, eV/Å (QM9 targets in the reference's units, see :mod:`zoo.data.qm9`).
Neighbour lists are not built here; ``zoo.graph`` adds them to a batch.
"""

from .ase_io import read_structures, structure_from_atoms, write_structures
from .errors import DataError
from .md17 import (
    md17_split,
    read_md_npz,
    read_mdbenchgnn,
    read_rmd17_npz,
    read_rmd17_splits,
    read_sgdml_npz,
)
from .oc20 import (
    OC20_SPLITS,
    RestrictedUnpickler,
    UnsafePickleError,
    find_oc20_splits,
    iter_oc20_lmdb,
    read_aselmdb,
    read_oc20_lmdb,
    safe_loads,
)
from .prepare import DATASETS, dataset_info, dataset_names, list_datasets, load_dataset, prepare_dataset, prepared_path
from .qm9 import (
    QM9_TARGETS,
    QM9_UNITS,
    iter_qm9_figshare,
    iter_qm9pack,
    qm9_split,
    read_qm9_atomref,
    read_qm9_uncharacterized,
    read_qm9_xyz,
)
from .remote import cache_dir, download, file_hash
from .splits import permutation_split, read_index_file
from .stats import average_degree, compute_statistics
from .store import PreparedDataset, write_prepared
from .structure import PER_ATOM_TARGETS, Structure, collate

__all__ = [
    "DATASETS",
    "DataError",
    "OC20_SPLITS",
    "PER_ATOM_TARGETS",
    "PreparedDataset",
    "QM9_TARGETS",
    "QM9_UNITS",
    "RestrictedUnpickler",
    "Structure",
    "UnsafePickleError",
    "average_degree",
    "cache_dir",
    "collate",
    "compute_statistics",
    "dataset_info",
    "dataset_names",
    "download",
    "file_hash",
    "find_oc20_splits",
    "iter_oc20_lmdb",
    "iter_qm9_figshare",
    "iter_qm9pack",
    "list_datasets",
    "load_dataset",
    "md17_split",
    "permutation_split",
    "prepare_dataset",
    "prepared_path",
    "qm9_split",
    "read_aselmdb",
    "read_index_file",
    "read_md_npz",
    "read_mdbenchgnn",
    "read_oc20_lmdb",
    "read_qm9_atomref",
    "read_qm9_uncharacterized",
    "read_qm9_xyz",
    "read_rmd17_npz",
    "read_rmd17_splits",
    "read_sgdml_npz",
    "read_structures",
    "safe_loads",
    "structure_from_atoms",
    "write_prepared",
    "write_structures",
]
