/* SPDX-License-Identifier: MIT */
/*
 * vCPU threads: each runs one vCPU's guest code through its accelerator and
 * dispatches its exits. Other threads reach a vCPU only through vcpu_kick
 * (the accelerator's kick flag + a signal, so no wake-up is lost between a
 * check and entering the guest).
 */
#ifndef KVMEM_CORE_VCPU_H
#define KVMEM_CORE_VCPU_H

#include <stdint.h>

struct vm;
struct vcpu;

int vcpu_create(struct vm *vm, unsigned int index, struct vcpu **out);
int vcpu_start(struct vcpu *vcpu);
/* Make the vCPU leave guest code or its paravirtual sleep and look at its VM's state. */
void vcpu_kick(struct vcpu *vcpu);
void vcpu_join(struct vcpu *vcpu);
void vcpu_destroy(struct vcpu *vcpu);

/* Paravirtual hlt: sleep up to ns, woken early by a kick. vCPU thread only. */
void vcpu_sleep(struct vcpu *vcpu, uint64_t ns);
/* The guest wrote ABI_SYS_EXCEPTION: report the exception its CPL0 stubs saw, stop the VM. */
void vcpu_report_exception(struct vcpu *vcpu);

unsigned int vcpu_index(const struct vcpu *vcpu);

#endif
