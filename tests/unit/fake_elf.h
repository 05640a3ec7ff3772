/* SPDX-License-Identifier: MIT */
/*
 * The ELF64 x86-64 header of a hand-made guest image, for the tests of the
 * loader (test_boot.c) and the fuzzer's seeds (tests/fuzz/make_corpus.c):
 * its program headers right after it.
 */
#ifndef KVMEM_TESTS_FAKE_ELF_H
#define KVMEM_TESTS_FAKE_ELF_H

#include <elf.h>
#include <stdint.h>
#include <string.h>

static inline void fake_elf_header(Elf64_Ehdr *eh, uint16_t type, uint64_t entry, uint16_t phnum)
{
	memset(eh, 0, sizeof(*eh));
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = type;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_entry = entry;
	eh->e_phoff = sizeof(*eh);
	eh->e_ehsize = sizeof(*eh);
	eh->e_phentsize = sizeof(Elf64_Phdr);
	eh->e_phnum = phnum;
}

#endif
