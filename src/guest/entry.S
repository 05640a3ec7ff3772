/* SPDX-License-Identifier: MIT */
/*
 * The guest's entry, on every vCPU (abi.h): rdi = vCPU index, rsi = boot
 * params, rdx = top of this vCPU's CPL3 stack, rcx = phys offset, r8 =
 * ABI_ENTRY_* flags, interrupts off. rdi, rsi, rdx, rcx and r8 pass through
 * untouched to guest_main(), which takes all five.
 *
 * Under kvm (no ABI_ENTRY_USER) we start at CPL0, which kvm-pvm emulates
 * instruction by instruction, so we drop to CPL3 at once: nine emulated
 * instructions from the flag test to iretq. The iretq frame is pushed just
 * below the CPL3 stack top, not on a CPL0 stack: the contract gives us no
 * CPL0 stack, and iretq leaves rsp at the stack top anyway. The frame's rip
 * is pushed by a call, which costs one instruction where lea and push cost
 * two, and needs no relocation.
 *
 * Under thread (ABI_ENTRY_USER) we already run at user level as a host
 * thread: iretq would load selectors that mean something else to the host,
 * so we only switch to our stack.
 *
 * Only PC-relative references: the image is position independent.
 * Selectors and the flag are literal because abi.h is not assembler-safe;
 * main.c checks them against abi.h with static asserts.
 */
#define ENTRY_USER 0x1
#define USER_DS 0x1b
#define USER_CS 0x23
#define RFLAGS_RESERVED 0x2

	.section .text.entry, "ax"
	.code64
	.globl _start
	.type _start, @function
_start:
	testb $ENTRY_USER, %r8b
	jnz from_user
	movq %rdx, %rsp
	pushq $USER_DS			/* ss */
	pushq %rdx			/* rsp */
	pushq $RFLAGS_RESERVED		/* rflags: IF=0, IOPL=0 */
	pushq $USER_CS			/* cs */
	call drop_to_user		/* rip: user_start, the next instruction */

/* CPL3 from here on. */
user_start:
	andq $-16, %rsp
	xorl %ebp, %ebp
	call guest_main
	ud2

drop_to_user:
	iretq

from_user:
	movq %rdx, %rsp
	jmp user_start
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
