#include <ts/ts.h>
#include <ts/remap.h>
