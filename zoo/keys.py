"""Field names shared by batches, model inputs and model outputs.

One spelling per field, used everywhere (data readers, the network, exporters, C++ and LAMMPS).
"""

# structure / batch fields
POSITIONS = "pos"
SPECIES = "species"  # atomic numbers Z (int64)
CELL = "cell"  # [n_graphs, 3, 3], rows are lattice vectors
PBC = "pbc"
TAGS = "tags"  # OC20: 0 subsurface, 1 surface, 2 adsorbate
FIXED = "fixed"
BATCH = "batch"  # graph index per atom
EDGE_INDEX = "edge_index"  # [2, E] as (src = neighbour, dst = centre)
EDGE_SHIFT = "edge_shift"  # [E, 3] cartesian shift added to pos[src]
CELL_OFFSETS = "cell_offsets"  # [E, 3] integer image of src
NUM_ATOMS = "natoms"

# model outputs
ENERGY = "energy"  # per structure, force-field and OC20 variants
ATOMIC_ENERGY = "atomic_energy"
PROPERTY = "property"  # per structure, QM9 variants (one target per network)
ATOMIC_PROPERTY = "atomic_property"
FORCES = "forces"
VIRIAL = "virial"  # [n_graphs, 3, 3], -dE/dstrain
STRESS = "stress"  # [n_graphs, 3, 3], virial / volume with the ASE sign (dE/dstrain / V)
AUX_DISPLACEMENT = "aux_displacement"  # OC20 IS2RS head, per atom

# dataset record fields and targets (zoo.data)
INDEX = "index"  # [n_graphs] original record number: QM9 gdb index, MD frame, OC20 sid
Y_INIT = "y_init"  # OC20 initial-structure energy, eV
Y_RELAXED = "y_relaxed"  # OC20 IS2RE target: relaxed adsorption energy, eV
POS_RELAXED = "pos_relaxed"  # OC20 IS2RS target, [N, 3] Å
QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")  # reference order
