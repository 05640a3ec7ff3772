/* SPDX-License-Identifier: MIT */
/*
 * The guest's only CPL0 code. The VMM enters here on every vCPU with
 * rdi = vCPU index, rsi = boot params gpa, rdx = top of this vCPU's CPL3
 * stack, interrupts off. CPL0 is emulated instruction by instruction, so we
 * build an iretq frame and drop to CPL3 at once.
 *
 * The frame is built just below the CPL3 stack top, not on a CPL0 stack:
 * the contract gives us no CPL0 stack, and iretq leaves rsp at the stack top
 * anyway. rdi, rsi and rdx pass through untouched to guest_main().
 *
 * Selectors are literal because abi.h is not assembler-safe; main.c checks
 * them against abi.h with static asserts.
 */
#define USER_DS 0x1b
#define USER_CS 0x23
#define RFLAGS_RESERVED 0x2

	.section .text.entry, "ax"
	.code64
	.globl _start
	.type _start, @function
_start:
	leaq -40(%rdx), %rsp
	movq $USER_DS, 32(%rsp)		/* ss */
	movq %rdx, 24(%rsp)		/* rsp */
	movq $RFLAGS_RESERVED, 16(%rsp)	/* rflags: IF=0, IOPL=0 */
	movq $USER_CS, 8(%rsp)		/* cs */
	leaq user_start(%rip), %rax
	movq %rax, (%rsp)		/* rip */
	iretq
	.size _start, . - _start

/* CPL3 from here on. */
	.text
	.type user_start, @function
user_start:
	andq $-16, %rsp
	xorl %ebp, %ebp
	call guest_main
	ud2
	.size user_start, . - user_start

	.section .note.GNU-stack, "", @progbits
