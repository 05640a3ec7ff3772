/* SPDX-License-Identifier: MIT */
/*
 * The host's stats as an OpenMetrics (Prometheus) text exposition, so that
 * operators scrape a kvmem host with the tools they already use: the
 * "metrics" control verb and `kvmem stat --format openmetrics`.
 */
#ifndef KVMEM_CORE_HOST_METRICS_H
#define KVMEM_CORE_HOST_METRICS_H

#include <jansson.h>

/*
 * The exposition of a "stats" payload (the stable schema): one metric family
 * per figure, named kvmem_<object>_<field> in Prometheus conventions (base
 * units, counters ending in _total), VMs and sources as labels, ending with
 * "# EOF". A malloc'd string (free it), or NULL without memory.
 */
char *host_metrics_text(json_t *stats);

#endif
