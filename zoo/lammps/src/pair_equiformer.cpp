// pair_style equiformer: see pair_equiformer.h for the input syntax and the two graph modes.
//
// TorchScript contract (zoo/export/torchscript.py): forward(pos [N,3], species [N] atomic numbers,
// edge_index [2,E] (row 0 = neighbour, row 1 = centre), batch [N], edge_shift [E,3] or None, tags,
// num_graphs) -> dict with `atomic_<energy_target>` [N]. Forces and the virial are taken here by autograd
// of the energy of the owned atoms (the module's own `compute_forces` is switched off), which is what the
// ghost mode needs and equals the module's `forces` / `virial` outputs in the images mode.
//
// AOTInductor contract (zoo/export/trace.py): flat inputs named by the package metadata `inputs` (pos,
// species, edge_index, batch, edge_shift, natoms, energy_weight), flat outputs named by `outputs`; the
// package computes forces = -d(sum_i w_i E_i)/dpos and virial = -dE_w/dstrain itself (no autograd in a
// package), so the ghost mode gives ghost atoms the weight 0. Metadata is read from the package before its
// compiled library is loaded, so a package built for another device or torch version is refused by name.

#include "pair_equiformer.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

using namespace LAMMPS_NS;

namespace {

std::vector<std::string> split_commas(const std::string &s)
{
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

// first line of a torch error, without the C++ backtrace
std::string short_what(const std::exception &e)
{
  const auto *c10err = dynamic_cast<const c10::Error *>(&e);
  std::string msg = c10err ? c10err->what_without_backtrace() : e.what();
  auto cut = msg.find('\n');
  return cut == std::string::npos ? msg : msg.substr(0, cut);
}

// a CPU tensor copied from a host buffer (an empty vector may have no data pointer)
torch::Tensor host_tensor(void *data, std::vector<int64_t> shape, torch::ScalarType type)
{
  int64_t numel = 1;
  for (auto s : shape) numel *= s;
  auto opts = torch::TensorOptions().dtype(type);
  return numel == 0 ? torch::empty(shape, opts) : torch::from_blob(data, shape, opts).clone();
}

// the torch version without a local suffix ("2.13.0+cpu" -> "2.13.0")
std::string base_version(const std::string &v)
{
  return v.substr(0, v.find('+'));
}

// an AOTInductor package (a zip archive with compiled AOTInductor files) rather than a TorchScript file
bool is_aoti_package(const std::string &path)
{
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const auto &name : reader.getAllRecords())
      if (name.find("aotinductor/") != std::string::npos) return true;
  } catch (const std::exception &) {
  }
  return false;
}

const char *const AOTI_COMPILE_RULE =
    "an AOTInductor package is compiled for one device type and one torch version: export it on the target "
    "machine with `equizoo export MODEL_DIR --format aoti --device cpu|cuda`, or use the TorchScript export";

}    // namespace

#ifndef EQUIZOO_TORCH_VERSION
#define EQUIZOO_TORCH_VERSION TORCH_VERSION
#endif

namespace {
constexpr bool starts_with(const char *s, const char *prefix)
{
  return *prefix == 0 || (*s == *prefix && starts_with(s + 1, prefix + 1));
}
}    // namespace
static_assert(starts_with(EQUIZOO_TORCH_VERSION, TORCH_VERSION),
              "the torch headers found by the compiler are not those of the torch the plugin is built for");

struct PairEquiformer::Model {
  torch::jit::Module module;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;    // set for a .pt2 package
  std::vector<std::string> inputs, outputs;                           // AOTI flat signature
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;
  std::string path, dtype_name, energy_key, energy_unit, variant;
  double r_max = 0.0;
  int num_layers = 0;
  double energy_mean = 0.0;    // per-structure constant added by the model (needed in ghost mode)
  bool mean_known = false;     // config_json named the energy target's mean
  std::vector<std::string> type_names;
  std::vector<long> type_numbers;
  std::unordered_map<std::string, std::string> meta;    // the export's string metadata (zoo/export/metadata.py)
};

/* ----------------------------------------------------------------------
   device from the pair_style keyword: cpu, cuda:N, or one GPU per rank on a node for cuda
------------------------------------------------------------------------- */

static torch::Device choose_device(LAMMPS *lmp, const std::string &want)
{
  if (want == "cpu") return torch::Device(torch::kCPU);
  if (want.rfind("cuda:", 0) == 0) return torch::Device(want);
  if (want == "cuda" || (want == "auto" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available())
      lmp->error->all(FLERR, "pair equiformer: device cuda requested but libtorch sees no CUDA device");
    MPI_Comm node;
    int local_rank = 0;
    MPI_Comm_split_type(lmp->world, MPI_COMM_TYPE_SHARED, lmp->comm->me, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % torch::cuda::device_count()));
  }
  return torch::Device(torch::kCPU);
}

void PairEquiformer::load_torchscript(Model &m)
{
  m.device = choose_device(lmp, device_arg);
  torch::jit::ExtraFilesMap files{{"format", ""},       {"variant", ""},       {"r_max", ""},
                                  {"type_names", ""},   {"type_numbers", ""},  {"model_dtype", ""},
                                  {"targets", ""},      {"units", ""},         {"energy_target", ""},
                                  {"needs_tags", ""},   {"num_layers", ""},    {"config_json", ""}};
  try {
    m.module = torch::jit::load(m.path, m.device, files);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair equiformer: {} is not a loadable TorchScript model or AOTInductor package ({})", m.path,
               short_what(e));
  }
  m.module.eval();
  // the weights are constants here: autograd records and traverses only what the forces need
  for (auto p : m.module.parameters()) p.set_requires_grad(false);
  m.meta.insert(files.begin(), files.end());
  if (m.meta["format"].rfind("equizoo-torchscript/", 0) != 0)
    error->all(FLERR, "pair equiformer: {} is a TorchScript file but not an equizoo export (no 'format' "
               "metadata); export it with zoo.export.export_torchscript", m.path);
  // forces come from autograd here; the module must return energies only
  try {
    m.module.setattr("compute_forces", false);
    m.module.setattr("compute_virial", false);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair equiformer: {} lacks the compute_forces/compute_virial attributes of an equizoo model "
               "({})", m.path, short_what(e));
  }
}

void PairEquiformer::load_aoti(Model &m)
{
  // the metadata lies in the archive beside the compiled library: read it first, load the library after
  try {
    m.meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(m.path, "model");
  } catch (const std::exception &e) {
    error->all(FLERR, "pair equiformer: cannot read the metadata of the AOTInductor package {} ({}); {}", m.path,
               short_what(e), AOTI_COMPILE_RULE);
  }
  if (m.meta["format"].rfind("equizoo-aoti/", 0) != 0)
    error->all(FLERR, "pair equiformer: {} is an AOTInductor package but not an equizoo export (no 'format' "
               "metadata); export it with `equizoo export MODEL_DIR --format aoti`", m.path);
  const std::string built_torch = m.meta["torch_version"];
  if (base_version(built_torch) != base_version(TORCH_VERSION))
    error->all(FLERR, "pair equiformer: torch version mismatch: {} was compiled with torch {} but this plugin runs "
               "libtorch {}; {}", m.path, built_torch, TORCH_VERSION, AOTI_COMPILE_RULE);
  const std::string built_for = m.meta["device"];
  if (built_for != "cpu" && built_for != "cuda")
    error->all(FLERR, "pair equiformer: {} names no device type (cpu or cuda) in its metadata; {}", m.path,
               AOTI_COMPILE_RULE);
  std::string want = device_arg;
  if (want == "auto") want = built_for;
  if (want.rfind(built_for, 0) != 0)
    error->all(FLERR, "pair equiformer: device mismatch: {} was built for {} but pair_style asks for {}; {}",
               m.path, built_for, want, AOTI_COMPILE_RULE);
  if (built_for == "cuda" && !torch::cuda::is_available())
    error->all(FLERR, "pair equiformer: device mismatch: {} was built for cuda but libtorch sees no CUDA device "
               "here; {}", m.path, AOTI_COMPILE_RULE);
  m.device = choose_device(lmp, want);
  try {
    const c10::DeviceIndex index = m.device.is_cuda() ? m.device.index() : -1;
    m.package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(m.path, "model", false, 1, index);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair equiformer: the AOTInductor package {} (built for {} with torch {}) cannot be loaded "
               "here ({}); {}", m.path, built_for, built_torch, short_what(e), AOTI_COMPILE_RULE);
  }
  m.inputs = split_commas(m.meta["inputs"]);
  m.outputs = split_commas(m.meta["outputs"]);
  for (const char *need : {"pos", "species", "edge_index", "batch", "edge_shift", "natoms", "energy_weight"})
    if (std::find(m.inputs.begin(), m.inputs.end(), need) == m.inputs.end())
      error->all(FLERR, "pair equiformer: {} has no '{}' input (inputs: {}); export it again with this equizoo",
                 m.path, need, m.meta["inputs"]);
  for (const char *need : {"forces", "virial"})
    if (std::find(m.outputs.begin(), m.outputs.end(), need) == m.outputs.end())
      error->all(FLERR, "pair equiformer: {} has no '{}' output (outputs: {}); export it again with this equizoo",
                 m.path, need, m.meta["outputs"]);
}

/* ---------------------------------------------------------------------- */

PairEquiformer::PairEquiformer(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  cutghost = nullptr;
}

PairEquiformer::~PairEquiformer()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairEquiformer::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::settings(int narg, char **arg)
{
  for (int i = 0; i < narg; i += 2) {
    std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "pair_style equiformer: keyword {} needs a value", key);
    std::string val = arg[i + 1];
    if (key == "device") {
      if (val != "auto" && val != "cpu" && val.rfind("cuda", 0) != 0)
        error->all(FLERR, "pair_style equiformer: device must be auto, cpu, cuda or cuda:N, got {}", val);
      device_arg = val;
    } else if (key == "dtype") {
      if (val != "float32" && val != "float64")
        error->all(FLERR, "pair_style equiformer: dtype must be float32 or float64, got {}", val);
      dtype_arg = val;
    } else if (key == "graph") {
      if (val != "auto" && val != "images" && val != "ghosts")
        error->all(FLERR, "pair_style equiformer: graph must be auto, images or ghosts, got {}", val);
      graph_arg = val;
    } else if (key == "jit_optimize") {
      jit_optimize = utils::logical(FLERR, val, false, lmp);
    } else {
      error->all(FLERR, "pair_style equiformer: unknown keyword {} (known: device, dtype, graph, jit_optimize)",
                 key);
    }
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * model.torchscript.pt|model.pt2 El1 El2 ... (one element per atom type)
------------------------------------------------------------------------- */

void PairEquiformer::coeff(int narg, char **arg)
{
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for equiformer needs: * * MODEL (.torchscript.pt or .pt2) followed by {} element name(s), "
               "one per atom type; got {} argument(s)", ntypes, narg);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for equiformer must be 'pair_coeff * * MODEL El1 El2 ...' (MODEL: .torchscript.pt or .pt2)");
  if (!allocated) allocate();

  auto m = std::make_unique<Model>();
  m->path = arg[2];
  if (!std::ifstream(m->path).good())
    error->all(FLERR, "pair equiformer: model file {} does not exist or cannot be read", m->path);

  if (is_aoti_package(m->path))
    load_aoti(*m);
  else
    load_torchscript(*m);
  auto &meta = m->meta;

  // dtype: metadata, parameters and the pair_style request must agree
  m->dtype_name = meta["model_dtype"];
  if (m->dtype_name != "float32" && m->dtype_name != "float64")
    error->all(FLERR, "pair equiformer: {} has model_dtype '{}'; only float32 and float64 are supported", m->path,
               m->dtype_name);
  m->dtype = m->dtype_name == "float64" ? torch::kFloat64 : torch::kFloat32;
  if (!dtype_arg.empty() && dtype_arg != m->dtype_name)
    error->all(FLERR, "pair equiformer: dtype mismatch: pair_style asks for {} but {} is a {} model; export the "
               "model in {} or change the pair_style dtype keyword", dtype_arg, m->path, m->dtype_name, dtype_arg);
  if (!m->package) {
    for (const auto &p : m->module.parameters()) {
      if (p.is_floating_point() && p.scalar_type() != m->dtype)
        error->all(FLERR, "pair equiformer: dtype mismatch in {}: metadata says {} but its parameters are {}",
                   m->path, m->dtype_name, std::string(c10::toString(p.scalar_type())));
      break;
    }
  }

  m->variant = meta["variant"];
  m->energy_key = meta["energy_target"];
  if (m->energy_key.empty())
    error->all(FLERR, "pair equiformer: {} predicts no energy (energy_target is empty); it cannot drive MD",
               m->path);
  if (meta["needs_tags"] == "1")
    error->all(FLERR, "pair equiformer: {} needs OC20 per-atom tags, which this pair style does not provide",
               m->path);
  try {
    m->r_max = std::stod(meta["r_max"]);
    m->num_layers = std::stoi(meta["num_layers"]);
  } catch (const std::exception &) {
    error->all(FLERR, "pair equiformer: {} has no valid r_max / num_layers metadata", m->path);
  }
  auto targets = split_commas(meta["targets"]), units = split_commas(meta["units"]);
  for (size_t t = 0; t < targets.size() && t < units.size(); t++)
    if (targets[t] == m->energy_key) m->energy_unit = units[t];
  if (!meta["config_json"].empty()) {
    try {
      auto cfg = json::parse(meta["config_json"]);
      for (const auto &t : cfg.at("targets"))
        if (t.at("name").get<std::string>() == m->energy_key) {
          m->energy_mean = t.value("mean", 0.0);
          m->mean_known = true;
        }
    } catch (const std::exception &e) {
      error->all(FLERR, "pair equiformer: cannot parse config_json metadata of {}: {}", m->path, e.what());
    }
  }

  // element names -> atomic numbers, as the model knows them
  m->type_names = split_commas(meta["type_names"]);
  for (const auto &z : split_commas(meta["type_numbers"])) m->type_numbers.push_back(std::stol(z));
  if (m->type_names.size() != m->type_numbers.size() || m->type_names.empty())
    error->all(FLERR, "pair equiformer: {} has inconsistent type_names / type_numbers metadata", m->path);
  type_to_z.assign(ntypes + 1, -1);
  for (int itype = 1; itype <= ntypes; itype++) {
    std::string el = arg[2 + itype];
    for (size_t t = 0; t < m->type_names.size(); t++)
      if (m->type_names[t] == el) type_to_z[itype] = m->type_numbers[t];
    if (type_to_z[itype] < 0) {
      std::string known;
      for (const auto &n : m->type_names)
        if (n != "X") known += (known.empty() ? "" : " ") + n;
      error->all(FLERR, "pair equiformer: element {} (atom type {}) is not in model {}; it knows: {}", el, itype,
                 m->path, known);
    }
  }

  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;

  if (comm->me == 0)
    utils::logmesg(lmp, "pair equiformer: loaded {} {} (variant {}, {}, r_max {} Å, {} layers, energy '{}' in {}) "
                   "on {}\n", m->package ? "AOTInductor package" : "TorchScript model", m->path, m->variant,
                   m->dtype_name, m->r_max, m->num_layers, m->energy_key, m->energy_unit, m->device.str());
  model = std::move(m);
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::init_style()
{
  if (!model) error->all(FLERR, "pair equiformer: pair_coeff * * MODEL El1 El2 ... has not been given");
  if (atom->tag_enable == 0) error->all(FLERR, "pair equiformer requires atom IDs");
  if (domain->dimension != 3) error->all(FLERR, "pair equiformer requires a 3d simulation");

  // the model's energy unit must be what LAMMPS calls energy
  const std::string units = update->unit_style;
  const std::string &eu = model->energy_unit;
  const char *needed = eu == "eV" ? "metal" : (eu == "kcal/mol" ? "real" : nullptr);
  if (needed && units != needed)
    error->all(FLERR, "pair equiformer: the model's energies are in {}, which needs 'units {}' (the input uses "
               "'units {}')", eu, needed, units);
  if (!needed && comm->me == 0)
    error->warning(FLERR, "pair equiformer: model energy unit '{}' is not eV or kcal/mol; check the LAMMPS units", eu);

  if (graph_arg == "images" && comm->nprocs > 1)
    error->all(FLERR, "pair equiformer: graph images works on one MPI rank only (ghost atoms of other ranks have "
               "no owner here); use graph ghosts or auto on {} ranks", comm->nprocs);
  ghost_mode = graph_arg == "ghosts" || (graph_arg == "auto" && comm->nprocs > 1);
  ghostneigh = ghost_mode ? 1 : 0;

  if (ghost_mode) {
    if (force->newton_pair == 0)
      error->all(FLERR, "pair equiformer with ghost atoms as graph nodes requires newton_pair on");
    if (!model->mean_known)
      error->all(FLERR, "pair equiformer: {} has no config_json metadata with the energy mean, which the ghost-node "
                 "graph needs to split the per-structure energy offset between ranks; re-export it with equizoo or "
                 "run on one rank", model->path);
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair equiformer with ghost atoms as graph nodes requires comm_modify mode single");
    // receptive field: the edge-degree embedding plus num_layers attention blocks, each one hop of r_max
    const double needed_cut = (model->num_layers + 1) * model->r_max + neighbor->skin;
    if (comm->cutghostuser < needed_cut) {
      if (comm->me == 0)
        utils::logmesg(lmp, "pair equiformer: ghost cutoff raised to {:.4g} Å = ({} layers + 1) x r_max {} + skin {} "
                       "so that the owned atoms' energies are exact on {} rank(s)\n",
                       needed_cut, model->num_layers, model->r_max, neighbor->skin, comm->nprocs);
      comm->cutghostuser = needed_cut;
    }
  }

  neighbor->add_request(this, NeighConst::REQ_FULL | (ghost_mode ? NeighConst::REQ_GHOST : 0));
  torch::jit::setGraphExecutorOptimize(jit_optimize);
}

double PairEquiformer::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  cutghost[i][j] = cutghost[j][i] = model->r_max;
  return model->r_max;
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair equiformer does not compute per-atom virials (compute stress/atom); the global "
               "virial and pressure are available");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  if (nlocal == 0) return;    // only owned atoms carry energy; a rank without any has nothing to add
  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int inum = list->inum;
  const int ncentres = inum + (ghost_mode ? list->gnum : 0);
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double r_max = model->r_max, rsq_max = r_max * r_max;
  const int n = ghost_mode ? nall : nlocal;    // graph nodes: owned atoms (+ ghosts)

  // images mode: a ghost's owner is the owned atom with the same ID (all atoms are owned on one rank)
  std::vector<int> owner;
  if (!ghost_mode) {
    std::unordered_map<tagint, int> local_of;
    local_of.reserve(nlocal);
    for (int i = 0; i < nlocal; i++) local_of[tag[i]] = i;
    owner.resize(nall);
    for (int j = 0; j < nall; j++) {
      if (j < nlocal) {
        owner[j] = j;
        continue;
      }
      auto it = local_of.find(tag[j]);
      if (it == local_of.end())
        error->one(FLERR, "pair equiformer: ghost atom {} has no owned copy on this rank (graph images needs a "
                   "single MPI rank)", tag[j]);
      owner[j] = it->second;
    }
  }

  std::vector<double> pos(3 * n), shift;
  std::vector<int64_t> species(n), src, dst, batch(n, 0);
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < 3; k++) pos[3 * i + k] = x[i][k];
    species[i] = type_to_z[type[i]];
    if (i >= nlocal) batch[i] = 1;    // ghosts form their own "structure" so that the mean share stays on owned atoms
  }
  for (int ii = 0; ii < ncentres; ii++) {
    const int i = ilist[ii];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= rsq_max) continue;
      const int s = ghost_mode ? j : owner[j];
      src.push_back(s);
      dst.push_back(i);
      if (!ghost_mode)
        for (int k = 0; k < 3; k++) shift.push_back(x[j][k] - x[s][k]);
    }
  }
  const int64_t nedges = static_cast<int64_t>(src.size());

  const auto dev = model->device;
  const auto dtype = model->dtype;
  const int64_t num_graphs = ghost_mode ? 2 : 1;
  torch::Tensor pos_t = host_tensor(pos.data(), {n, 3}, torch::kFloat64).to(dev, dtype);
  torch::Tensor species_t = host_tensor(species.data(), {n}, torch::kInt64).to(dev);
  torch::Tensor batch_t = host_tensor(batch.data(), {n}, torch::kInt64).to(dev);
  torch::Tensor edge_t = torch::stack({host_tensor(src.data(), {nedges}, torch::kInt64),
                                       host_tensor(dst.data(), {nedges}, torch::kInt64)})
                             .to(dev);

  // atomic energies [n], and -dE_owned/dpos [n,3] with the virial [3,3] when the package computes them
  torch::Tensor atomic, grad_pos, grad_shift, package_virial;
  try {
    if (model->package) {
      torch::Tensor shift_t = ghost_mode ? torch::zeros({nedges, 3}, torch::kFloat64)
                                         : host_tensor(shift.data(), {nedges, 3}, torch::kFloat64);
      std::vector<int64_t> natoms{nlocal, n - nlocal};
      std::vector<double> weight(n, 0.0);
      for (int i = 0; i < nlocal; i++) weight[i] = 1.0;
      std::unordered_map<std::string, torch::Tensor> named{
          {"pos", pos_t},
          {"species", species_t},
          {"edge_index", edge_t},
          {"batch", batch_t},
          {"edge_shift", shift_t.to(dev, dtype)},
          {"natoms", host_tensor(natoms.data(), {num_graphs}, torch::kInt64).to(dev)},
          {"energy_weight", host_tensor(weight.data(), {n}, torch::kFloat64).to(dev, dtype)}};
      std::vector<torch::Tensor> inputs;
      for (const auto &name : model->inputs) {
        auto it = named.find(name);
        if (it == named.end()) error->one(FLERR, "pair equiformer: the package needs an input '{}' that LAMMPS "
                                          "cannot give", name);
        inputs.push_back(it->second);
      }
      auto outputs = model->package->run(inputs);
      if (outputs.size() != model->outputs.size())
        error->one(FLERR, "pair equiformer: {} returned {} outputs, its metadata names {}", model->path,
                   outputs.size(), model->outputs.size());
      for (size_t k = 0; k < outputs.size(); k++) {
        const auto &name = model->outputs[k];
        if (name == "atomic_" + model->energy_key) atomic = outputs[k];
        if (name == "forces") grad_pos = -outputs[k];
        if (name == "virial") package_virial = outputs[k].sum(0);
      }
    } else {
      pos_t.requires_grad_(true);
      torch::Tensor shift_t;
      torch::jit::IValue shift_arg;    // None in ghost mode
      if (!ghost_mode) {
        shift_t = host_tensor(shift.data(), {nedges, 3}, torch::kFloat64).to(dev, dtype);
        if (vflag_global) shift_t.requires_grad_(true);
        shift_arg = shift_t;
      }
      std::vector<torch::jit::IValue> inputs{pos_t,     species_t,           edge_t, batch_t,
                                             shift_arg, torch::jit::IValue(), num_graphs};
      auto out = model->module.forward(inputs).toGenericDict();
      atomic = out.at("atomic_" + model->energy_key).toTensor();
      torch::Tensor energy = atomic.slice(0, 0, nlocal).sum();
      if (energy.requires_grad()) {
        std::vector<torch::Tensor> wrt{pos_t};
        if (shift_t.defined() && shift_t.requires_grad()) wrt.push_back(shift_t);
        auto grads = torch::autograd::grad({energy}, wrt, {}, false, false, true);
        grad_pos = grads[0];
        if (wrt.size() > 1) grad_shift = grads[1];
      }
    }
  } catch (const std::exception &e) {
    error->one(FLERR, "pair equiformer: the model failed on {} atoms / {} edges: {}", n, nedges, short_what(e));
  }
  if (!atomic.defined())
    error->one(FLERR, "pair equiformer: {} gave no 'atomic_{}' output", model->path, model->energy_key);

  // per-structure mean: the model gave the owned atoms a share of mean / nlocal; it must be mean / natoms
  double mean_fix = 0.0;
  if (ghost_mode && nlocal > 0 && atom->natoms > 0)
    mean_fix = model->energy_mean * (1.0 / static_cast<double>(atom->natoms) - 1.0 / nlocal);

  torch::Tensor atomic_cpu = atomic.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double *e = atomic_cpu.data_ptr<double>();
  if (eflag_global)
    for (int i = 0; i < nlocal; i++) eng_vdwl += e[i] + mean_fix;
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += e[i] + mean_fix;

  if (grad_pos.defined()) {
    torch::Tensor g = grad_pos.to(torch::kCPU, torch::kFloat64).contiguous();
    const double *gp = g.data_ptr<double>();
    for (int i = 0; i < n; i++)
      for (int k = 0; k < 3; k++) f[i][k] -= gp[3 * i + k];

    if (vflag_global) {
      // virial = -dE/dstrain = -(sum_i x_i (x) dE/dx_i + sum_e s_e (x) dE/ds_e); a package computes it itself
      double w[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
      if (package_virial.defined()) {
        torch::Tensor pv = package_virial.to(torch::kCPU, torch::kFloat64).contiguous();
        const double *pvp = pv.data_ptr<double>();
        for (int a = 0; a < 3; a++)
          for (int b = 0; b < 3; b++) w[a][b] = pvp[3 * a + b];
      } else {
        for (int i = 0; i < n; i++)
          for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) w[a][b] -= pos[3 * i + a] * gp[3 * i + b];
      }
      if (grad_shift.defined()) {
        torch::Tensor gs = grad_shift.to(torch::kCPU, torch::kFloat64).contiguous();
        const double *gsp = gs.data_ptr<double>();
        for (int64_t ed = 0; ed < nedges; ed++)
          for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) w[a][b] -= shift[3 * ed + a] * gsp[3 * ed + b];
      }
      virial[0] += w[0][0];
      virial[1] += w[1][1];
      virial[2] += w[2][2];
      virial[3] += 0.5 * (w[0][1] + w[1][0]);
      virial[4] += 0.5 * (w[0][2] + w[2][0]);
      virial[5] += 0.5 * (w[1][2] + w[2][1]);
    }
  }
}
