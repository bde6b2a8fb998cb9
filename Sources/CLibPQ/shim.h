#ifndef EVENTLINE_CLIBPQ_SHIM_H
#define EVENTLINE_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
