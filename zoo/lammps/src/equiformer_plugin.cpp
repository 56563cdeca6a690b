// Registers `pair_style equiformer` with LAMMPS when the shared object is loaded (`plugin load`).
#include "lammpsplugin.h"
#include "pair_equiformer.h"

#ifndef EQUIZOO_LAMMPS_VERSION
#define EQUIZOO_LAMMPS_VERSION "unknown"
#endif

using namespace LAMMPS_NS;

static void *equiformer_creator(void *lmp)
{
  return new PairEquiformer(static_cast<LAMMPS *>(lmp));
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = EQUIZOO_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "equiformer";
  plugin.info = "equizoo Equiformer pair style (TorchScript or AOTInductor package)";
  plugin.author = "equizoo";
  plugin.creator.v1 = &equiformer_creator;
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
