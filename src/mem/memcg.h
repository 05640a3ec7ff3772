/* SPDX-License-Identifier: MIT */
/*
 * A hard memory limit for the whole host process, as a backstop under the
 * policy's budget: a memory cgroup of its own (a child of the one it runs
 * in, cgroup v1's memory controller or v2's), holding kvmem alone, whose
 * limit the kernel enforces. The policy keeps usage near the budget; the
 * kernel makes sure it never passes the limit, whatever the guests do: at
 * the limit it reclaims what it can in the group, and what it cannot (guest
 * memory, with no kernel swap) ends with its OOM killer stopping kvmem, as
 * a libvirt hard_limit does to QEMU. So the limit is the budget plus the
 * tolerance the policy is stated to keep.
 *
 * With kvmem alone in the group, the group's usage is also the policy's
 * measure of what the host uses (overcommit.h).
 */
#ifndef KVMEM_MEM_MEMCG_H
#define KVMEM_MEM_MEMCG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Move this process into a new memory cgroup limited to limit_bytes. Call
 * before the process makes threads (v1 moves them with it, but early is
 * simplest). 0, or -errno with *why a sentence for the user.
 */
int mem_memcg_enter(uint64_t limit_bytes, const char **why);
/*
 * The memory cgroup this process is in: cgroup v1's memory controller,
 * else the v2 group (where the unified hierarchy is mounted). Its directory
 * into dir; *is_v2, *is_root say which and whether it is the root group.
 * 0, or -errno (-ENOENT: no memory cgroup at all).
 */
int mem_memcg_current(char *dir, size_t len, bool *is_v2, bool *is_root);
/* Back to the group it came from; the group made by mem_memcg_enter is removed. */
void mem_memcg_leave(void);
/* The group's directory (empty when not entered). */
const char *mem_memcg_path(void);

#endif
