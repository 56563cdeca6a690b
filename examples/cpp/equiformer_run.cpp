// Run an exported equizoo TorchScript model on a molecule from an xyz file; print energy and forces.
//
//   equiformer_run MODEL.torchscript.pt MOLECULE.xyz [--device cpu|cuda]
//
// The model's forward (zoo/export/torchscript.py) takes pos [N,3], species [N] (atomic numbers),
// edge_index [2,E] (row 0 = neighbour, row 1 = centre), batch [N], edge_shift, tags, num_graphs and
// returns a dict of tensors; its metadata (r_max, element names, dtype, ...) is in the file's extra files.

#include <torch/script.h>

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

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.torchscript.pt MOLECULE.xyz [--device cpu|cuda]\n";
    return 2;
  }
  const std::string model_path = argv[1], xyz_path = argv[2];
  torch::Device device(torch::kCPU);
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--device" && i + 1 < argc) device = torch::Device(argv[++i]);
  }
  try {
    // 1. load the module and its metadata
    torch::jit::ExtraFilesMap meta{{"format", ""},      {"r_max", ""},       {"type_names", ""},
                                   {"type_numbers", ""}, {"model_dtype", ""}, {"energy_target", ""},
                                   {"units", ""},        {"targets", ""},     {"needs_tags", ""}};
    torch::jit::Module model = torch::jit::load(model_path, device, meta);
    model.eval();
    if (meta["format"].rfind("equizoo-torchscript/", 0) != 0)
      throw std::runtime_error(model_path + " is not an equizoo TorchScript export (no 'format' metadata)");
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

    // 3. run: forward(pos, species, edge_index, batch, edge_shift=None, tags=None, num_graphs=1)
    std::vector<torch::jit::IValue> inputs{pos, z, edge_index, batch, torch::jit::IValue(), torch::jit::IValue(),
                                           static_cast<int64_t>(1)};
    auto out = model.forward(inputs).toGenericDict();
    torch::Tensor e = out.at(energy).toTensor().to(torch::kCPU, torch::kFloat64);
    std::printf("model: %s  r_max %g  dtype %s  device %s\n", model_path.c_str(), r_max, meta["model_dtype"].c_str(),
                device.str().c_str());
    std::printf("atoms: %lld  edges: %lld\n", static_cast<long long>(n), static_cast<long long>(n_edges));
    std::printf("energy: %.17g %s\n", e.item<double>(), unit.c_str());
    if (out.contains("forces")) {
      torch::Tensor f = out.at("forces").toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
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
