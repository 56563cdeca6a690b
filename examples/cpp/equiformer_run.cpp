// Run an exported equizoo model on a molecule from an xyz file; print energy and forces.
//
//   equiformer_run MODEL.torchscript.pt|MODEL.pt2 MOLECULE.xyz [--device cpu|cuda]
//
// Two formats, told apart by the file's content:
// - TorchScript (zoo/export/torchscript.py): forward takes pos [N,3], species [N] (atomic numbers),
//   edge_index [2,E] (row 0 = neighbour, row 1 = centre), batch [N], edge_shift, tags, num_graphs and
//   returns a dict of tensors; its metadata (r_max, element names, dtype, ...) is in the file's extra files.
// - AOTInductor package (zoo/export/aoti.py): flat tensors in, flat tensors out, named in order by the
//   package metadata `inputs` and `outputs` (same metadata keys as TorchScript besides). A package is
//   compiled for one device type and one torch version: export it on the machine that runs it.

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/version.h>

#include <memory>
#include <unordered_map>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) out.push_back(item);
  return out;
}

struct Molecule {
  std::vector<std::string> symbols;
  std::vector<double> pos;  // N*3, Å
};

Molecule read_xyz(const std::string &path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open xyz file " + path);
  std::string line;
  std::getline(in, line);
  std::size_t n = 0;
  try {
    n = std::stoul(line);
  } catch (const std::exception &) {
    throw std::runtime_error(path + ": first line must be the number of atoms, got '" + line + "'");
  }
  std::getline(in, line);  // comment line
  Molecule mol;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::getline(in, line)) throw std::runtime_error(path + ": expected " + std::to_string(n) + " atom lines");
    std::istringstream row(line);
    std::string sym;
    double x, y, z;
    if (!(row >> sym >> x >> y >> z)) throw std::runtime_error(path + ": cannot parse atom line '" + line + "'");
    mol.symbols.push_back(sym);
    mol.pos.insert(mol.pos.end(), {x, y, z});
  }
  return mol;
}

// an AOTInductor package (a zip archive holding AOTInductor files) rather than a TorchScript file
bool is_aoti_package(const std::string &path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const auto &name : reader.getAllRecords())
      if (name.find("aotinductor/") != std::string::npos) return true;
  } catch (const std::exception &) {
  }
  return false;
}

const char *const COMPILE_RULE =
    "an AOTInductor package is compiled for one device type and one torch version: export it on this machine "
    "with `equizoo export MODEL_DIR --format aoti --device cpu|cuda`, or use the TorchScript export";

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.torchscript.pt|MODEL.pt2 MOLECULE.xyz [--device cpu|cuda]\n";
    return 2;
  }
  const std::string model_path = argv[1], xyz_path = argv[2];
  torch::Device device(torch::kCPU);
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--device" && i + 1 < argc) device = torch::Device(argv[++i]);
  }
  try {
    // 1. load the module (or package) and its metadata
    std::unordered_map<std::string, std::string> meta{
        {"format", ""},      {"r_max", ""},         {"type_names", ""}, {"type_numbers", ""}, {"model_dtype", ""},
        {"energy_target", ""}, {"units", ""},       {"targets", ""},    {"needs_tags", ""}};
    torch::jit::Module model;
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
    const bool aoti = is_aoti_package(model_path);
    if (aoti) {
      meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(model_path, "model");
      if (meta["format"].rfind("equizoo-aoti/", 0) != 0)
        throw std::runtime_error(model_path + " is not an equizoo AOTInductor export (no 'format' metadata)");
      const std::string built_torch = meta["torch_version"], built_for = meta["device"];
      if (built_torch.substr(0, built_torch.find('+')) != TORCH_VERSION)
        throw std::runtime_error("torch version mismatch: " + model_path + " was compiled with torch " + built_torch +
                                 " but this program runs libtorch " + TORCH_VERSION + "; " + COMPILE_RULE);
      if (built_for != device.str().substr(0, built_for.size()))
        throw std::runtime_error("device mismatch: " + model_path + " was built for " + built_for +
                                 " but --device is " + device.str() + "; " + COMPILE_RULE);
      try {
        package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
            model_path, "model", false, 1, device.is_cuda() ? device.index() : static_cast<c10::DeviceIndex>(-1));
      } catch (const std::exception &err) {
        throw std::runtime_error(model_path + " cannot be loaded here (" + std::string(err.what()).substr(0, 300) +
                                 "); " + COMPILE_RULE);
      }
    } else {
      torch::jit::ExtraFilesMap files(meta.begin(), meta.end());
      model = torch::jit::load(model_path, device, files);
      model.eval();
      // the weights are constants here: autograd records and traverses only what the forces need
      for (auto p : model.parameters()) p.set_requires_grad(false);
      meta = std::unordered_map<std::string, std::string>(files.begin(), files.end());
      if (meta["format"].rfind("equizoo-torchscript/", 0) != 0)
        throw std::runtime_error(model_path + " is not an equizoo TorchScript export (no 'format' metadata)");
    }
    if (meta["needs_tags"] == "1") throw std::runtime_error("this model needs OC20 tags; this example handles molecules only");
    const double r_max = std::stod(meta["r_max"]);
    const auto dtype = meta["model_dtype"] == "float64" ? torch::kFloat64 : torch::kFloat32;
    const std::string energy = meta["energy_target"];
    if (energy.empty()) throw std::runtime_error("the model predicts no energy (energy_target is empty)");
    std::map<std::string, int64_t> z_of;  // element name -> atomic number, from the model itself
    auto names = split(meta["type_names"], ','), numbers = split(meta["type_numbers"], ',');
    for (std::size_t t = 0; t < names.size() && t < numbers.size(); ++t) z_of[names[t]] = std::stoll(numbers[t]);
    std::string unit = "eV";
    auto targets = split(meta["targets"], ','), units = split(meta["units"], ',');
    for (std::size_t t = 0; t < targets.size() && t < units.size(); ++t)
      if (targets[t] == energy) unit = units[t];

    // 2. the molecule and its radius graph (O(N^2), edges sorted by centre then neighbour)
    Molecule mol = read_xyz(xyz_path);
    const int64_t n = static_cast<int64_t>(mol.symbols.size());
    std::vector<int64_t> species(n), src, dst;
    for (int64_t i = 0; i < n; ++i) {
      auto it = z_of.find(mol.symbols[i]);
      if (it == z_of.end()) throw std::runtime_error("element " + mol.symbols[i] + " is not known to the model");
      species[i] = it->second;
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        if (i == j) continue;
        double d2 = 0.0;
        for (int k = 0; k < 3; ++k) d2 += std::pow(mol.pos[3 * j + k] - mol.pos[3 * i + k], 2);
        if (d2 < r_max * r_max) {
          src.push_back(j);
          dst.push_back(i);
        }
      }
    }
    const int64_t n_edges = static_cast<int64_t>(src.size());
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    torch::Tensor pos = torch::from_blob(mol.pos.data(), {n, 3}, torch::kFloat64).to(device, dtype);
    torch::Tensor z = torch::from_blob(species.data(), {n}, i64).to(device);
    torch::Tensor edge_index = torch::stack({torch::from_blob(src.data(), {n_edges}, i64),
                                             torch::from_blob(dst.data(), {n_edges}, i64)})
                                   .to(device);
    torch::Tensor batch = torch::zeros({n}, i64.device(device));

    // 3. run: TorchScript forward(pos, species, edge_index, batch, edge_shift=None, tags=None, num_graphs=1),
    //    or the package on its flat inputs (edge_shift zeros, natoms [n], energy_weight ones)
    std::unordered_map<std::string, torch::Tensor> out;
    if (aoti) {
      std::unordered_map<std::string, torch::Tensor> named{
          {"pos", pos},
          {"species", z},
          {"edge_index", edge_index},
          {"batch", batch},
          {"edge_shift", torch::zeros({n_edges, 3}, pos.options())},
          {"natoms", torch::full({1}, n, i64.device(device))},
          {"energy_weight", torch::ones({n}, pos.options())}};
      std::vector<torch::Tensor> inputs;
      for (const auto &name : split(meta["inputs"], ',')) {
        if (!named.count(name)) throw std::runtime_error("the package needs an input '" + name + "' this example lacks");
        inputs.push_back(named.at(name));
      }
      auto results = package->run(inputs);
      auto names_out = split(meta["outputs"], ',');
      if (results.size() != names_out.size()) throw std::runtime_error("the package's outputs differ from its metadata");
      for (std::size_t k = 0; k < results.size(); ++k) out[names_out[k]] = results[k];
    } else {
      std::vector<torch::jit::IValue> inputs{pos, z, edge_index, batch, torch::jit::IValue(), torch::jit::IValue(),
                                             static_cast<int64_t>(1)};
      for (const auto &item : model.forward(inputs).toGenericDict()) out[item.key().toStringRef()] = item.value().toTensor();
    }
    torch::Tensor e = out.at(energy).to(torch::kCPU, torch::kFloat64);
    std::printf("model: %s  format %s  r_max %g  dtype %s  device %s\n", model_path.c_str(),
                aoti ? "aoti" : "torchscript", r_max, meta["model_dtype"].c_str(), device.str().c_str());
    std::printf("atoms: %lld  edges: %lld\n", static_cast<long long>(n), static_cast<long long>(n_edges));
    std::printf("energy: %.17g %s\n", e.item<double>(), unit.c_str());
    if (out.count("forces")) {
      torch::Tensor f = out.at("forces").to(torch::kCPU, torch::kFloat64).contiguous();
      auto fa = f.accessor<double, 2>();
      std::printf("forces: %s/Å\n", unit.c_str());
      for (int64_t i = 0; i < n; ++i)
        std::printf("%-3s %.17g %.17g %.17g\n", mol.symbols[i].c_str(), fa[i][0], fa[i][1], fa[i][2]);
    }
  } catch (const c10::Error &err) {
    std::cerr << "error: " << err.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception &err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
