/* SPDX-License-Identifier: MIT */
/*
 * Access information: how long ago the guest last used each 2 MiB chunk of
 * its RAM, in monitoring intervals (the chunk's age), so that reclaim takes
 * the coldest chunks first. A chunk, not a page: what a monitor can afford
 * to watch over gigabytes is a coldness ranking of chunks, never an LRU of
 * pages (DAMON's regions are MiB-sized for the same reason).
 *
 * Sources:
 *   sampling  write-protect sampling here, always: every interval up to
 *             MEM_ACCESS_SAMPLES resident pages of each chunk are
 *             write-protected, and a chunk whose sample the guest wrote is
 *             young again. Writes only: userfaultfd sees no reads.
 *   damon     where the kernel offers it, the data access monitor
 *             (mem/damon.h) adds what it saw through the accessed bits,
 *             reads included (mem_access_seen).
 * And a touch of a swapped page (a read as much as a write) makes its
 * chunk young at once: the pages reclaim got wrong are the ones seen.
 *
 * One sampler per VM, run by the policy thread once per interval.
 */
#ifndef KVMEM_MEM_ACCESS_H
#define KVMEM_MEM_ACCESS_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/gm.h"

/*
 * Pages sampled per resident chunk per interval: MEM_ACCESS_SAMPLES while
 * the chunk looks cold or unknown, one once it is known to be used (its
 * count of uses at least MEM_ACCESS_HOT_HITS). A written sample costs the
 * guest a fault, and its protection and release a TLB flush each on the
 * vCPUs' CPUs: four samples in every chunk of a guest busy over 200 MiB
 * took a fifth of its throughput here (on thread). A busy chunk's one page
 * is written within an interval all the same; a chunk whose one sample was
 * missed soon falls below the mark and is sampled fully again, so chunks
 * written only now and then are still told from cold ones.
 */
#define MEM_ACCESS_SAMPLES 4
#define MEM_ACCESS_HOT_HITS 4
#define MEM_ACCESS_AGE_MAX 0xffff

struct mem_access;

int mem_access_create(struct gm *gm, struct mem_access **out);
/* Releases the samples still protected. */
void mem_access_destroy(struct mem_access *a);

/*
 * One interval of write-protect sampling: judge last interval's samples
 * (a chunk whose sample was written becomes 0, every other one an
 * interval older), then protect this interval's. Returns the share of last
 * interval's samples that were written (the VM's active fraction, as ESX
 * estimates it), or -1 when there were none.
 *   age_only: nothing needs the ages (no swap): only the active fraction
 *   is measured, from fewer samples.
 */
double mem_access_sample(struct mem_access *a, bool age_only);

/* Chunks of gm (MEM_CHUNK_PAGES pages each, the last one maybe short). */
uint64_t mem_access_chunks(const struct gm *gm);
uint16_t mem_access_age(const struct gm *gm, uint64_t chunk);
/*
 * What another source (DAMON) saw of a chunk since the last interval: `uses`
 * accesses counted, or none and idle for `idle` intervals (MEM_ACCESS_AGE_MAX:
 * it cannot say). Evidence added to the samples', never in their place: a
 * used chunk is young and `uses` hotter, an idle one only ever younger. The
 * samples still age the chunks and decay their counts once per interval
 * (mem_access_sample), so the evidence is only as lasting as theirs. DAMON
 * alone ranked a guest's hot set with its cold memory: it checks one page
 * of a region every 10 ms, and a hot set whose every page is written once
 * a second looks idle to it, while a write-protected sample sees the whole
 * interval.
 */
void mem_access_seen(struct gm *gm, uint64_t chunk, unsigned int uses, uint16_t idle);

/*
 * gm's chunks, coldest first: the one used least often lately (each chunk
 * keeps a decaying count of the uses seen: written samples, swap-ins,
 * DAMON's access count), then the longest unused, then at random (seeded
 * by `seed`): before anything is known, in address order would take the
 * guest's low memory first, where its kernel and hottest data often live.
 * Up to max indexes into out; returns how many.
 */
uint64_t mem_access_rank(const struct gm *gm, uint64_t seed, uint32_t *out, uint64_t max);

#endif
