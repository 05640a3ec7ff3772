/* SPDX-License-Identifier: MIT */
/* The host process's own memory cgroup (see memcg.h). */
#define LOG_TAG "memcg"
#include "mem/memcg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"

static char parent_dir[384];	/* the group kvmem came from */
static char own_dir[448];	/* the group it made, or "" */
static bool v2;

static int write_file(const char *dir, const char *name, const char *text)
{
	char path[512];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, text, strlen(text)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int mem_memcg_current(char *dir, size_t len, bool *is_v2, bool *is_root)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[512], v2path[384] = "";
	bool found = false;

	if (!f)
		return -errno;
	while (!found && fgets(line, sizeof(line), f)) {
		char *ctrl = strchr(line, ':'), *path;

		if (!ctrl || !(path = strchr(ctrl + 1, ':')))
			continue;
		*ctrl = '\0';
		*path++ = '\0';
		path[strcspn(path, "\n")] = '\0';
		if (!strcmp(ctrl + 1, "memory")) {
			snprintf(dir, len, "/sys/fs/cgroup/memory%s", strcmp(path, "/") ? path : "");
			*is_root = !strcmp(path, "/");
			found = true;
		} else if (!strcmp(line, "0") && !*(ctrl + 1)) {
			snprintf(v2path, sizeof(v2path), "%s", strcmp(path, "/") ? path : "");
		}
	}
	fclose(f);
	*is_v2 = !found;
	if (found)
		return 0;
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK))
		return -ENOENT;
	snprintf(dir, len, "/sys/fs/cgroup%s", v2path);
	*is_root = !v2path[0];
	return 0;
}

/* True when group dir holds no process: its cgroup.procs reads empty. */
static bool group_empty(const char *dir)
{
	char path[800], c;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, &c, 1);
	close(fd);
	return n == 0;
}

/*
 * Remove the groups hosts killed before they could leave them (SIGKILL, a
 * crash): kvmem-PID in parent_dir whose PID is no process and that holds
 * none. Each would stay for good, its limit beside the new one's. A group
 * whose PID lives is left alone (a host starting now: it makes its group
 * before it moves in), and so is one that holds a process.
 */
static void remove_stale_groups(void)
{
	DIR *d = opendir(parent_dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char dir[768], *end;
		long pid;

		if (strncmp(e->d_name, "kvmem-", 6))
			continue;
		pid = strtol(e->d_name + 6, &end, 10);
		if (*end || pid <= 0 || pid == (long)getpid() || pid > INT32_MAX ||
		    !(kill((pid_t)pid, 0) && errno == ESRCH))
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", parent_dir, e->d_name);
		if (!group_empty(dir))
			continue;
		if (rmdir(dir))
			log_warn("a stale memory cgroup %s (its host %ld is gone): %m", dir, pid);
		else
			log_info("removed the stale memory cgroup %s (its host %ld is gone)", dir, pid);
	}
	closedir(d);
}

int mem_memcg_enter(uint64_t limit_bytes, const char **why)
{
	bool root;
	char text[32];
	int ret;

	if (own_dir[0])
		return -EBUSY;
	ret = mem_memcg_current(parent_dir, sizeof(parent_dir), &v2, &root);
	if (ret) {
		*why = "no memory cgroup controller on this machine";
		return ret;
	}
	remove_stale_groups();
	/* One of an earlier process with our pid, left behind: ours now. */
	snprintf(own_dir, sizeof(own_dir), "%s/kvmem-%d", parent_dir, (int)getpid());
	if (mkdir(own_dir, 0755) && errno != EEXIST) {
		ret = -errno;
		*why = ret == -EACCES || ret == -EROFS || ret == -EPERM
			       ? "cannot make a memory cgroup here (not root, or a read-only cgroup fs)"
			       : "cannot make a memory cgroup";
		own_dir[0] = '\0';
		return ret;
	}
	/*
	 * v2: the controller must be on for the parent's children, which a
	 * group may do only while it holds no process itself (the root may).
	 */
	if (v2 && write_file(parent_dir, "cgroup.subtree_control", "+memory") == -EBUSY &&
	    access(own_dir, F_OK) == 0) {
		char max[512];

		snprintf(max, sizeof(max), "%s/memory.max", own_dir);
		if (access(max, F_OK)) {
			*why = "the cgroup kvmem runs in cannot give its children the memory "
			       "controller (cgroup v2: not while it holds processes): start kvmem in a "
			       "delegated group of its own (systemd-run --scope -p Delegate=yes ...)";
			ret = -EBUSY;
			goto fail;
		}
	}
	snprintf(text, sizeof(text), "%" PRIu64, limit_bytes);
	ret = write_file(own_dir, v2 ? "memory.max" : "memory.limit_in_bytes", text);
	if (ret) {
		*why = v2 ? "cannot set memory.max" : "cannot set memory.limit_in_bytes";
		goto fail;
	}
	snprintf(text, sizeof(text), "%d", (int)getpid());
	ret = write_file(own_dir, "cgroup.procs", text);
	if (ret) {
		*why = "cannot move kvmem into its memory cgroup";
		goto fail;
	}
	log_info("a hard limit of %" PRIu64 " MiB: memory cgroup %s", limit_bytes >> 20, own_dir);
	return 0;

fail:
	rmdir(own_dir);
	own_dir[0] = '\0';
	return ret;
}

void mem_memcg_leave(void)
{
	char text[32];

	if (!own_dir[0])
		return;
	snprintf(text, sizeof(text), "%d", (int)getpid());
	if (write_file(parent_dir, "cgroup.procs", text) || rmdir(own_dir))
		log_warn("leaving memory cgroup %s: %s", own_dir, strerror(errno));
	own_dir[0] = '\0';
}

const char *mem_memcg_path(void)
{
	return own_dir;
}
