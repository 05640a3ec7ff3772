/* SPDX-License-Identifier: MIT */
/*
 * vCPU threads: each runs the KVM_RUN loop for one vCPU and dispatches its
 * exits. Other threads reach a vCPU only through vcpu_kick (signal +
 * immediate_exit, so no wake-up is lost between a check and KVM_RUN).
 */
#ifndef KVMEM_CORE_VCPU_H
#define KVMEM_CORE_VCPU_H

#include <linux/kvm.h>
#include <stdint.h>

struct vm;
struct vcpu;

int vcpu_create(struct vm *vm, unsigned int index, struct vcpu **out);
int vcpu_start(struct vcpu *vcpu);
/* Make the vCPU leave KVM_RUN or its paravirtual sleep and look at its VM's state. */
void vcpu_kick(struct vcpu *vcpu);
void vcpu_join(struct vcpu *vcpu);
void vcpu_destroy(struct vcpu *vcpu);

/* Paravirtual hlt: sleep up to ns, woken early by a kick. vCPU thread only. */
void vcpu_sleep(struct vcpu *vcpu, uint64_t ns);
/* Report the guest exception whose frame is on this vCPU's CPL0 stack and stop the VM. */
void vcpu_report_exception(struct vcpu *vcpu);

unsigned int vcpu_index(const struct vcpu *vcpu);
int vcpu_fd(const struct vcpu *vcpu);

#endif
