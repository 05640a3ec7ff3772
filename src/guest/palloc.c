/* SPDX-License-Identifier: MIT */
/*
 * Physical page allocator: one bit per page (1 = free) per boot range, the
 * bitmaps packed into the first pages of the first range that can hold them.
 * A per-range hint (lowest word that may hold a free bit) keeps repeated
 * single-page allocation from rescanning the full, used prefix.
 *
 * Lowest-address-first everywhere: freed low pages are reused before fresh
 * high ones, so the guest touches as little new memory as it can.
 *
 * A second, much smaller bitmap per range holds the "reported" mark of each
 * aligned PALLOC_CHUNK_PAGES chunk lying wholly inside the range; clearing
 * it is part of every allocation, so a set mark always means "every page of
 * the chunk stayed free since the host dropped it".
 *
 * Locking: pa_lock guards all of the bitmaps, hints and counters.
 */
#include "palloc.h"
#include "rt.h"

struct prange {
	uint64_t base;		/* first gfn */
	uint64_t npages;
	uint64_t *bits;		/* npages bits, 1 = free */
	uint64_t hint;		/* no free bit in words below this */
	uint64_t nfree;
	uint64_t *rep;		/* one bit per chunk, 1 = reported */
	uint64_t chunk0;	/* absolute index of the first whole chunk */
	uint64_t nchunks;	/* whole chunks inside the range */
};

static struct prange ranges[ABI_MAX_RANGES];	/* sorted by base; fixed after init */
static unsigned nr_ranges;
static uint64_t nfree_total;
static uint64_t total_pages;
static uint64_t meta_pages;
static uint64_t nreported;	/* chunks marked reported */
static uint64_t nisolated;	/* pages claimed for free page reporting */
static struct rt_spinlock pa_lock;
static palloc_reclaim_fn *reclaim_fn;
static uint64_t nstalls;	/* palloc_reclaim() calls (atomic) */

#define WORD_BITS 64
#define ALL_ONES (~0ULL)

/* Bits [lo, hi) of a word, 0 <= lo < hi <= 64. */
static uint64_t word_mask(unsigned lo, unsigned hi)
{
	uint64_t m = hi == WORD_BITS ? ALL_ONES : (1ULL << hi) - 1;

	return m & ~((1ULL << lo) - 1);
}

/* First page index >= @from whose bit equals @want, or npages. */
static uint64_t find_next(const struct prange *r, uint64_t from, bool want)
{
	uint64_t w, word;

	if (from >= r->npages)
		return r->npages;
	w = from / WORD_BITS;
	word = want ? r->bits[w] : ~r->bits[w];
	word &= ~((1ULL << (from % WORD_BITS)) - 1);
	for (;;) {
		if (word) {
			uint64_t i = w * WORD_BITS + (uint64_t)__builtin_ctzll(word);

			return MIN(i, r->npages);
		}
		if (++w * WORD_BITS >= r->npages)
			return r->npages;
		word = want ? r->bits[w] : ~r->bits[w];
	}
}

/* Is chunk @c of @r wholly free? */
static bool chunk_free(const struct prange *r, uint64_t c)
{
	uint64_t s0 = (r->chunk0 + c) * PALLOC_CHUNK_PAGES - r->base;

	return find_next(r, s0, false) >= s0 + PALLOC_CHUNK_PAGES;
}

static bool rep_test(const struct prange *r, uint64_t c)
{
	return r->rep[c / WORD_BITS] & (1ULL << (c % WORD_BITS));
}

/* Allocating pages [start, start + n) of @r: their chunks lose the reported mark. */
static void unreport(struct prange *r, uint64_t start, uint64_t n)
{
	uint64_t first = (r->base + start) / PALLOC_CHUNK_PAGES;
	uint64_t last = (r->base + start + n - 1) / PALLOC_CHUNK_PAGES;
	uint64_t c;

	if (!r->nchunks || last < r->chunk0)
		return;
	first = MAX(first, r->chunk0) - r->chunk0;
	last = MIN(last - r->chunk0, r->nchunks - 1);
	for (c = first; c <= last; c++) {
		if (!rep_test(r, c))
			continue;
		r->rep[c / WORD_BITS] &= ~(1ULL << (c % WORD_BITS));
		nreported--;
	}
}

static void mark_reported(struct prange *r, uint64_t c)
{
	if (rep_test(r, c))
		return;
	r->rep[c / WORD_BITS] |= 1ULL << (c % WORD_BITS);
	nreported++;
}

/* Set (free) or clear (allocate) bits [start, start + n). */
static void assign(struct prange *r, uint64_t start, uint64_t n, bool free)
{
	uint64_t end = start + n;

	if (!free && n)
		unreport(r, start, n);

	while (start < end) {
		uint64_t w = start / WORD_BITS;
		unsigned lo = start % WORD_BITS;
		unsigned hi = (unsigned)MIN((uint64_t)WORD_BITS, end - w * WORD_BITS);
		uint64_t m = word_mask(lo, hi);

		if (free)
			r->bits[w] |= m;
		else
			r->bits[w] &= ~m;
		start = (w + 1) * WORD_BITS;
	}
	if (free) {
		r->nfree += n;
		nfree_total += n;
	} else {
		r->nfree -= n;
		nfree_total -= n;
	}
}

static struct prange *range_of(uint64_t gfn)
{
	unsigned i;

	for (i = 0; i < nr_ranges; i++)
		if (gfn >= ranges[i].base && gfn - ranges[i].base < ranges[i].npages)
			return &ranges[i];
	return NULL;
}

int palloc_init(const struct abi_boot_params *bp)
{
	uint64_t words = 0, need;
	struct prange *home = NULL;
	uint64_t *next;
	unsigned i, j;

	for (i = 0; i < bp->nr_ranges && i < ABI_MAX_RANGES; i++) {
		struct prange r = {
			.base = gpa_to_gfn(gpa(bp->ranges[i].gpa)),
			.npages = bp->ranges[i].len >> RT_PAGE_SHIFT,
		};

		if (!r.npages)
			continue;
		r.chunk0 = DIV_ROUND_UP(r.base, PALLOC_CHUNK_PAGES);
		if ((r.base + r.npages) / PALLOC_CHUNK_PAGES > r.chunk0)
			r.nchunks = (r.base + r.npages) / PALLOC_CHUNK_PAGES - r.chunk0;
		/* Insertion sort: the VMM's order is not part of the contract. */
		for (j = nr_ranges; j > 0 && ranges[j - 1].base > r.base; j--)
			ranges[j] = ranges[j - 1];
		ranges[j] = r;
		nr_ranges++;
		words += DIV_ROUND_UP(r.npages, WORD_BITS) + DIV_ROUND_UP(r.nchunks, WORD_BITS);
	}
	if (!nr_ranges)
		return -EINVAL;

	need = DIV_ROUND_UP(words * sizeof(uint64_t), RT_PAGE_SIZE);
	for (i = 0; i < nr_ranges && !home; i++)
		if (ranges[i].npages > need)
			home = &ranges[i];
	if (!home)
		return -ENOMEM;

	next = phys_to_virt(gfn_to_gpa(home->base));
	for (i = 0; i < nr_ranges; i++) {
		struct prange *r = &ranges[i];
		uint64_t nw = DIV_ROUND_UP(r->npages, WORD_BITS);
		uint64_t w;

		r->bits = next;
		next += nw;
		for (w = 0; w < nw; w++)
			r->bits[w] = 0;
		r->rep = next;
		next += DIV_ROUND_UP(r->nchunks, WORD_BITS);
		for (w = 0; w < DIV_ROUND_UP(r->nchunks, WORD_BITS); w++)
			r->rep[w] = 0;
		assign(r, 0, r->npages, true);
		total_pages += r->npages;
	}
	assign(home, 0, need, false);
	meta_pages = need;
	/* Never touched since boot: the host holds nothing there to drop. */
	for (i = 0; i < nr_ranges; i++) {
		struct prange *r = &ranges[i];
		uint64_t c;

		for (c = 0; c < r->nchunks; c++)
			if (chunk_free(r, c))
				mark_reported(r, c);
	}
	return 0;
}

gpa_t palloc_alloc(void)
{
	uint32_t gfn;

	if (!palloc_alloc_gfns(&gfn, 1))
		return GPA_NULL;
	return gfn_to_gpa(gfn);
}

void palloc_free(gpa_t gpa)
{
	palloc_free_run(gpa, 1);
}

size_t palloc_alloc_gfns(uint32_t *gfns, size_t n)
{
	size_t got = 0;
	unsigned i;

	rt_spin_lock(&pa_lock);
	for (i = 0; i < nr_ranges && got < n; i++) {
		struct prange *r = &ranges[i];
		uint64_t nw = DIV_ROUND_UP(r->npages, WORD_BITS);
		uint64_t w;

		for (w = r->hint; w < nw && r->nfree && got < n; w++) {
			uint64_t word = r->bits[w];
			uint64_t taken = 0;

			while (word && got < n) {
				unsigned b = (unsigned)__builtin_ctzll(word);

				word &= word - 1;
				taken++;
				gfns[got++] = (uint32_t)(r->base + w * WORD_BITS + b);
			}
			r->bits[w] = word;
			if (taken)
				unreport(r, w * WORD_BITS, WORD_BITS);
			r->nfree -= taken;
			nfree_total -= taken;
			r->hint = word ? w : w + 1;
		}
	}
	rt_spin_unlock(&pa_lock);
	return got;
}

/* A free of pages that are not allocated is a guest bug: say so loudly. */
static bool check_used(struct prange *r, uint64_t gfn, uint64_t npages)
{
	uint64_t idx;

	if (!r || gfn - r->base + npages > r->npages) {
		rt_printf("palloc: bad free gfn 0x%lx pages %lu: not in a range\n", gfn, npages);
		return false;
	}
	idx = gfn - r->base;
	if (find_next(r, idx, true) < idx + npages) {
		rt_printf("palloc: double free gfn 0x%lx\n", r->base + find_next(r, idx, true));
		return false;
	}
	return true;
}

/* Free [gfn, gfn + npages): false (said) when they are not all allocated. */
static bool free_locked(uint64_t gfn, uint64_t npages)
{
	struct prange *r = range_of(gfn);

	if (!check_used(r, gfn, npages))
		return false;
	assign(r, gfn - r->base, npages, true);
	r->hint = MIN(r->hint, (gfn - r->base) / WORD_BITS);
	return true;
}

/*
 * The range holding the whole chunk that starts at gfn (chunk aligned), and
 * the chunk's index in it, or NULL when no range has that chunk whole.
 */
static struct prange *whole_chunk(uint64_t gfn, uint64_t *c)
{
	struct prange *r = range_of(gfn);
	uint64_t abs = gfn / PALLOC_CHUNK_PAGES;

	if (!r || gfn % PALLOC_CHUNK_PAGES || abs < r->chunk0 || abs - r->chunk0 >= r->nchunks)
		return NULL;
	*c = abs - r->chunk0;
	return r;
}

void palloc_free_gfns(const uint32_t *gfns, size_t n)
{
	size_t i;

	rt_spin_lock(&pa_lock);
	for (i = 0; i < n; i++)
		free_locked(gfns[i], 1);
	rt_spin_unlock(&pa_lock);
}

void palloc_free_gfns_clean(const uint32_t *gfns, size_t n)
{
	size_t i = 0;

	rt_spin_lock(&pa_lock);
	while (i < n) {
		size_t j = i + 1;
		uint64_t g, end;

		while (j < n && gfns[j] == gfns[j - 1] + 1)
			j++;
		for (g = i; g < j; g++)
			free_locked(gfns[g], 1);
		/* Aligned chunks wholly inside the run [gfns[i], gfns[j - 1]]. */
		end = (uint64_t)gfns[j - 1] + 1;
		for (g = (uint64_t)DIV_ROUND_UP(gfns[i], PALLOC_CHUNK_PAGES) * PALLOC_CHUNK_PAGES;
		     g + PALLOC_CHUNK_PAGES <= end; g += PALLOC_CHUNK_PAGES) {
			uint64_t c;
			struct prange *r = whole_chunk(g, &c);

			if (r && chunk_free(r, c))
				mark_reported(r, c);
		}
		i = j;
	}
	rt_spin_unlock(&pa_lock);
}

void palloc_free_run(gpa_t gpa, uint64_t npages)
{
	rt_spin_lock(&pa_lock);
	free_locked(gpa_to_gfn(gpa), npages);
	rt_spin_unlock(&pa_lock);
}

gpa_t palloc_alloc_run(uint64_t npages, uint64_t align)
{
	gpa_t gpa = GPA_NULL;
	unsigned i;

	if (!npages)
		return GPA_NULL;
	if (!align)
		align = 1;
	rt_spin_lock(&pa_lock);
	for (i = 0; i < nr_ranges && gpa_is_null(gpa); i++) {
		struct prange *r = &ranges[i];
		uint64_t idx = r->hint * WORD_BITS;

		while (r->nfree >= npages) {
			uint64_t s = find_next(r, idx, true), e;

			if (s >= r->npages)
				break;
			/* Round the absolute gfn up to the alignment. */
			s = (r->base + s + align - 1) / align * align - r->base;
			if (s >= r->npages)
				break;
			e = find_next(r, s, false);
			if (e == s) {
				idx = s + 1;
				continue;
			}
			if (e - s >= npages) {
				assign(r, s, npages, false);
				gpa = gfn_to_gpa(r->base + s);
				break;
			}
			idx = e;
		}
	}
	rt_spin_unlock(&pa_lock);
	return gpa;
}

int palloc_claim(gpa_t gpa, uint64_t npages)
{
	uint64_t gfn = gpa_to_gfn(gpa);
	struct prange *r;
	int ret = 0;

	rt_spin_lock(&pa_lock);
	r = range_of(gfn);
	if (!r || !npages || gfn - r->base + npages > r->npages)
		ret = -EINVAL;
	else if (find_next(r, gfn - r->base, false) < gfn - r->base + npages)
		ret = -EBUSY;
	else
		assign(r, gfn - r->base, npages, false);
	rt_spin_unlock(&pa_lock);
	return ret;
}

bool palloc_next_free_run(gpa_t *gpa, uint64_t *npages, uint64_t min_pages)
{
	uint64_t from = gpa_to_gfn(*gpa);
	bool found = false;
	unsigned i;

	if (!min_pages)
		min_pages = 1;
	rt_spin_lock(&pa_lock);
	for (i = 0; i < nr_ranges && !found; i++) {
		struct prange *r = &ranges[i];
		uint64_t idx;

		if (from >= r->base + r->npages)
			continue;
		idx = from > r->base ? from - r->base : 0;
		while (idx < r->npages) {
			uint64_t s = find_next(r, idx, true);
			uint64_t e = find_next(r, s, false);

			if (s >= r->npages)
				break;
			if (e - s >= min_pages) {
				*gpa = gfn_to_gpa(r->base + s);
				*npages = e - s;
				found = true;
				break;
			}
			idx = e;
		}
	}
	rt_spin_unlock(&pa_lock);
	return found;
}

size_t palloc_claim_unreported(gpa_t *gpas, size_t max)
{
	size_t got = 0;
	unsigned i;

	rt_spin_lock(&pa_lock);
	for (i = 0; i < nr_ranges && got < max; i++) {
		struct prange *r = &ranges[i];
		uint64_t c;

		if (r->nfree < PALLOC_CHUNK_PAGES)
			continue;
		for (c = 0; c < r->nchunks && got < max; c++) {
			/* Whole words of marks at once: most chunks are marked or in use. */
			if (c % WORD_BITS == 0 && r->rep[c / WORD_BITS] == ALL_ONES) {
				c += WORD_BITS - 1;
				continue;
			}
			if (rep_test(r, c) || !chunk_free(r, c))
				continue;
			assign(r, (r->chunk0 + c) * PALLOC_CHUNK_PAGES - r->base, PALLOC_CHUNK_PAGES,
			       false);
			nisolated += PALLOC_CHUNK_PAGES;
			gpas[got++] = gfn_to_gpa((r->chunk0 + c) * PALLOC_CHUNK_PAGES);
		}
	}
	rt_spin_unlock(&pa_lock);
	return got;
}

void palloc_free_reported(gpa_t gpa, bool reported)
{
	uint64_t gfn = gpa_to_gfn(gpa), c;
	struct prange *r;

	rt_spin_lock(&pa_lock);
	r = whole_chunk(gfn, &c);
	if (!r) {
		rt_spin_unlock(&pa_lock);
		rt_printf("palloc: bad reported chunk gpa 0x%lx\n", gpa_val(gpa));
		return;
	}
	if (free_locked(gfn, PALLOC_CHUNK_PAGES)) {
		if (reported)
			mark_reported(r, c);
		nisolated -= MIN(nisolated, PALLOC_CHUNK_PAGES);
	}
	rt_spin_unlock(&pa_lock);
}

uint64_t palloc_avail_pages(void)
{
	uint64_t n;

	rt_spin_lock(&pa_lock);
	n = nfree_total + nisolated;
	rt_spin_unlock(&pa_lock);
	return n;
}

uint64_t palloc_reported_pages(void)
{
	return READ_ONCE(nreported) * PALLOC_CHUNK_PAGES;
}

void palloc_set_reclaim(palloc_reclaim_fn *fn)
{
	__atomic_store_n(&reclaim_fn, fn, __ATOMIC_RELEASE);
}

uint64_t palloc_reclaim(uint64_t pages)
{
	palloc_reclaim_fn *fn = __atomic_load_n(&reclaim_fn, __ATOMIC_ACQUIRE);

	atomic_add(&nstalls, 1);
	return fn ? fn(pages) : 0;
}

uint64_t palloc_stalls(void)
{
	return READ_ONCE(nstalls);
}

uint64_t palloc_free_pages(void)
{
	return READ_ONCE(nfree_total);
}

uint64_t palloc_total_pages(void)
{
	return total_pages;
}

uint64_t palloc_meta_pages(void)
{
	return meta_pages;
}
