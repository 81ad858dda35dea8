; triple-real: a real-mode guest that triple-faults on purpose (guest.entry = real:0x7c00).
;
; It loads an IDTR with limit 0 and executes UD2. In real mode the CPU delivers an
; exception through the 4-byte IVT entry at vector * 4 and checks that entry against the
; IDTR limit (SDM Vol. 2A "INT n/INTO/INT3/INT1—Call to Interrupt Procedure", its
; real-address-mode operation); entry 6 lies beyond the limit, so delivery fails with
; #GP, whose entry lies beyond it too, which makes a #DF, and a failure to deliver #DF
; is a triple fault. Under VMX that is a VM exit; sluice must end the guest and report
; the triple fault.
;
; If execution continues, the guest says so and exits with status 1 through the exit
; hypercall. The IDTR base points at a table whose every entry leads to that report, so
; an implementation that ignores the limit is caught too, instead of jumping through
; the all-zero vector at address 0 and running the zero-filled memory up to 0x7c00 and
; this code again, forever.
;
; As in hello-real, the hypercall registers are set with 32-bit moves, so bits 31:16
; are never stale; bits 63:32 are zero at sluice's real-mode entry.

bits 16
org 0x7c00

HC_PRINT    equ 1
HC_EXIT     equ 2

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    jmp 0:.flat                 ; CS = 0, so labels are linear addresses
.flat:
    mov eax, HC_PRINT
    mov ebx, msg_about
    mov ecx, msg_about_len
    vmcall

    lidt [empty_idtr]
    ud2

    ; Still here: the triple fault did not end the guest.
survived:
    xor ax, ax                  ; reached through `ivt`: CS is already 0, DS may not be
    mov ds, ax
    mov eax, HC_PRINT
    mov ebx, msg_survived
    mov ecx, msg_survived_len
    vmcall
    mov eax, HC_EXIT
    mov ebx, 1
    vmcall
.halt:
    hlt
    jmp .halt

empty_idtr:
    dw 0                        ; limit: not even vector 0 fits
    dd ivt                      ; base

; What the CPU finds if it delivers an exception despite the limit: 0000:survived for
; every exception vector.
ivt:
    times 32 dw survived, 0

msg_about:          db "real: about to triple-fault", 10
msg_about_len       equ $ - msg_about
msg_survived:       db "real: still running after the triple fault", 10
msg_survived_len    equ $ - msg_survived
