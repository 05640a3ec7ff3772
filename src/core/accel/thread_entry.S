/* SPDX-License-Identifier: MIT */
/*
 * The thread accelerator's way into and out of guest code (see thread.c).
 *
 * The guest's registers live in this thread's struct thread_tls (thread.c),
 * reached through %fs with local-exec offsets so that no register is needed
 * to find them: entering the guest must load every general register, and
 * leaving it must save them before any is free. The offsets below are
 * checked against the C struct by static asserts in thread.c.
 *
 * Three ways out, all ending on the host stack saved at entry with
 * accel_thread_enter's return value in eax:
 *   0  the kick was armed before the guest ran (resume check);
 *   1  the guest called its MMIO entry (accel_thread_mmio);
 *   2  a signal left the guest (thread.c rewrote the signal's context to
 *      land on accel_thread_host_return).
 *
 * [accel_thread_resume_start, accel_thread_resume_end) is restartable: a
 * kick signal that lands there is rewound to the start (thread.c), so the
 * check of the kick and the jump into the guest are atomic with respect to
 * kicks, as KVM's immediate_exit makes them for KVM_RUN.
 */
#define T accel_thread_tls@tpoff

#define T_GPR 0		/* rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15, 8 bytes each */
#define T_RAX (T_GPR + 0 * 8)
#define T_RCX (T_GPR + 1 * 8)
#define T_RDX (T_GPR + 2 * 8)
#define T_RBX (T_GPR + 3 * 8)
#define T_RSP (T_GPR + 4 * 8)
#define T_RBP (T_GPR + 5 * 8)
#define T_RSI (T_GPR + 6 * 8)
#define T_RDI (T_GPR + 7 * 8)
#define T_R8 (T_GPR + 8 * 8)
#define T_R9 (T_GPR + 9 * 8)
#define T_R10 (T_GPR + 10 * 8)
#define T_R11 (T_GPR + 11 * 8)
#define T_R12 (T_GPR + 12 * 8)
#define T_R13 (T_GPR + 13 * 8)
#define T_R14 (T_GPR + 14 * 8)
#define T_R15 (T_GPR + 15 * 8)
#define T_RIP 128
#define T_RFLAGS 136
#define T_HOST_SP 144
#define T_KICK 152
#define T_IN_GUEST 160
#define T_GUEST_MXCSR 164
#define T_HOST_MXCSR 168
#define T_GUEST_FCW 172
#define T_HOST_FCW 174
#define T_MMIO_GPA 176
#define T_MMIO_VAL 184
#define T_MMIO_OP 192

#define EXIT_KICKED 0
#define EXIT_MMIO 1
#define RFLAGS_AFTER_CALL 0x202
#define RFLAGS_HOST 0x2
#define RFLAGS_AC 0x40000

	.text

/* long accel_thread_enter(void): run the guest from the context in thread_tls. */
	.globl accel_thread_enter
	.type accel_thread_enter, @function
accel_thread_enter:
	pushq %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	subq $8, %rsp			/* 16-byte aligned host stack for the C we return to */
	movq %rsp, %fs:T+T_HOST_SP
	stmxcsr %fs:T+T_HOST_MXCSR
	fnstcw %fs:T+T_HOST_FCW

	.globl accel_thread_resume_start
accel_thread_resume_start:
	movq %fs:T+T_KICK, %rax
	cmpl $0, (%rax)
	jne .Lkicked
	ldmxcsr %fs:T+T_GUEST_MXCSR
	fldcw %fs:T+T_GUEST_FCW
	movl $1, %fs:T+T_IN_GUEST
	pushq %fs:T+T_RFLAGS
	popfq
	movq %fs:T+T_RAX, %rax
	movq %fs:T+T_RCX, %rcx
	movq %fs:T+T_RDX, %rdx
	movq %fs:T+T_RBX, %rbx
	movq %fs:T+T_RBP, %rbp
	movq %fs:T+T_RSI, %rsi
	movq %fs:T+T_RDI, %rdi
	movq %fs:T+T_R8, %r8
	movq %fs:T+T_R9, %r9
	movq %fs:T+T_R10, %r10
	movq %fs:T+T_R11, %r11
	movq %fs:T+T_R12, %r12
	movq %fs:T+T_R13, %r13
	movq %fs:T+T_R14, %r14
	movq %fs:T+T_R15, %r15
	movq %fs:T+T_RSP, %rsp
	jmpq *%fs:T+T_RIP
	.globl accel_thread_resume_end
accel_thread_resume_end:

.Lkicked:
	/* The guest's MXCSR and control word may already be loaded: not saved, it never ran. */
	movq %fs:T+T_HOST_SP, %rsp
	movl $0, %fs:T+T_IN_GUEST
	movl $EXIT_KICKED, %eax
	jmp accel_thread_host_return
	.size accel_thread_enter, . - accel_thread_enter

/*
 * uint64_t accel_thread_mmio(uint64_t gpa, uint64_t value, uint64_t op): the
 * guest's MMIO entry (guest/abi.h). Saves what the SysV ABI says a callee
 * keeps, and where to return, then leaves like any exit; the next entry
 * resumes at the return address with the result in rax.
 */
	.globl accel_thread_mmio
	.type accel_thread_mmio, @function
accel_thread_mmio:
	movl $0, %fs:T+T_IN_GUEST
	movq %rbx, %fs:T+T_RBX
	movq %rbp, %fs:T+T_RBP
	movq %r12, %fs:T+T_R12
	movq %r13, %fs:T+T_R13
	movq %r14, %fs:T+T_R14
	movq %r15, %fs:T+T_R15
	movq (%rsp), %rax
	movq %rax, %fs:T+T_RIP
	leaq 8(%rsp), %rax
	movq %rax, %fs:T+T_RSP
	movq $RFLAGS_AFTER_CALL, %fs:T+T_RFLAGS
	movq %rdi, %fs:T+T_MMIO_GPA
	movq %rsi, %fs:T+T_MMIO_VAL
	movq %rdx, %fs:T+T_MMIO_OP
	stmxcsr %fs:T+T_GUEST_MXCSR
	fnstcw %fs:T+T_GUEST_FCW
	movq %fs:T+T_HOST_SP, %rsp
	movl $EXIT_MMIO, %eax
	jmp accel_thread_host_return
	.size accel_thread_mmio, . - accel_thread_mmio

/*
 * Back to accel_thread_enter's caller: rsp is the host stack it saved, eax
 * why. The flags are the host's again (the guest's AC would make any
 * unaligned access of the host fault), x87 state is reset (the guest may
 * leave values on its stack; the caller's ABI wants it empty), then the
 * host's control words come back.
 */
	.globl accel_thread_host_return
	.type accel_thread_host_return, @function
accel_thread_host_return:
	pushq $RFLAGS_HOST		/* no guest AC, DF or TF in host code (IF is not ours) */
	popfq
	fninit
	fldcw %fs:T+T_HOST_FCW
	ldmxcsr %fs:T+T_HOST_MXCSR
	addq $8, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret
	.size accel_thread_host_return, . - accel_thread_host_return

/*
 * The signal handlers' entries. The kernel clears DF and TF for a handler
 * but not AC, which the guest may have set: with it, the first unaligned
 * access of the C handler would raise #AC in host code. Cleared here before
 * any C runs; the signal's return brings the guest's flags back.
 */
	.globl accel_kick_handler
	.type accel_kick_handler, @function
accel_kick_handler:
	pushfq
	andl $~RFLAGS_AC, (%rsp)
	popfq
	jmp accel_thread_kick_landed
	.size accel_kick_handler, . - accel_kick_handler

	.globl accel_thread_fault_entry
	.type accel_thread_fault_entry, @function
accel_thread_fault_entry:
	pushfq
	andl $~RFLAGS_AC, (%rsp)
	popfq
	jmp accel_thread_fault
	.size accel_thread_fault_entry, . - accel_thread_fault_entry

	.section .note.GNU-stack, "", @progbits
