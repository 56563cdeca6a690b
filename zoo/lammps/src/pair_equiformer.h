// pair_style equiformer: an equizoo export as a LAMMPS pair style, either TorchScript
// (zoo/export/torchscript.py) or an AOTInductor package (zoo/export/aoti.py), told apart by the file's content.
//
//   pair_style equiformer [device auto|cpu|cuda|cuda:N] [dtype float32|float64] [graph auto|images|ghosts]
//                         [jit_optimize yes|no]
//   pair_coeff * * model.torchscript.pt C H O      (one element name per LAMMPS atom type)
//   pair_coeff * * model.pt2 C H O                 (an AOTInductor package: built for one device type and
//                                                   one torch version; export it on the target machine)
//
// graph images (default on one MPI rank): the model's nodes are the owned atoms; a neighbour that is a
//   ghost (periodic image) becomes an edge from its owning atom with edge_shift = x_ghost - x_owner, so
//   every message-passing layer sees the true periodic graph (exact for any number of layers).
// graph ghosts (default on several ranks): owned and ghost atoms are nodes, the energy is the sum over
//   owned atoms, forces on ghosts are sent back to their owners (newton_pair on). Exact when ghosts reach
//   (num_layers + 1) * r_max + skin, which init_style() enforces by raising the ghost cutoff.
#ifndef EQUIZOO_PAIR_EQUIFORMER_H
#define EQUIZOO_PAIR_EQUIFORMER_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairEquiformer : public Pair {
 public:
  PairEquiformer(class LAMMPS *);
  ~PairEquiformer() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  struct Model;                  // the TorchScript module or AOTI package and its metadata (keeps torch out of here)
  std::unique_ptr<Model> model;  // loaded by coeff()
  std::vector<long> type_to_z;   // LAMMPS type (1..ntypes) -> atomic number
  std::string device_arg = "auto", dtype_arg, graph_arg = "auto";
  bool jit_optimize = false;
  bool ghost_mode = false;  // chosen in init_style()
  void allocate();
  void load_torchscript(Model &m);
  void load_aoti(Model &m);
};

}  // namespace LAMMPS_NS

#endif
