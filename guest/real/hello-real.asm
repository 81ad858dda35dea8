; hello-real: the real-mode smoke test, entered at 0000:7C00 (guest.entry = real:0x7c00).
;
; Checks what a real-mode guest can rely on under sluice: the virtual UART, the print
; and exit hypercalls, and the CPUID hypervisor leaf. There is no BIOS, so every byte of
; output is written to COM1 by hand. Exit status 0 when the hypervisor leaf says
; "sluicesluice", 1 when it does not or when the print hypercall fails.
;
; The file is exactly one 512-byte boot sector (signature 0xAA55 at offset 510), so the
; same binary also boots from a floppy or disk image on a PC BIOS (there the VMCALLs
; raise #UD, since no hypervisor is present).
;
; Hypercall registers: the hypervisor reads the full RAX/RBX/RCX. Outside 64-bit mode
; the upper 32 bits of those registers cannot be written; they keep whatever value they
; had (zero at sluice's real-mode entry). So the 32-bit forms (mov eax, ...) are used to
; set the low 32 bits, never the 16-bit ones, which would leave bits 31:16 stale.

bits 16
org 0x7c00

COM1        equ 0x3f8
COM1_LSR    equ COM1 + 5
LSR_THR_EMPTY equ 0x20          ; LSR bit 5: transmit holding register empty
POLL_LIMIT  equ 0xffff          ; give up waiting for THR empty after this many polls

HC_PRINT    equ 1
HC_EXIT     equ 2

start:
    cli
    cld
    ; sluice enters with all segments 0 and SP = 0x7c00; set them anyway, so the code
    ; does not depend on it (and also works when a BIOS loads it with other values).
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    jmp 0:.flat                 ; CS = 0 too, so labels are linear addresses
.flat:
    mov si, msg_hello
    call uart_puts

    ; VMCALL print: RBX = linear address = DS * 16 + offset = offset (DS = 0).
    mov eax, HC_PRINT
    mov ebx, msg_hypercall
    mov ecx, msg_hypercall_len
    vmcall
    test eax, eax
    jz .cpuid
    mov si, msg_print_failed
    call uart_puts
    jmp fail

.cpuid:
    mov eax, 0x40000000
    cpuid
    mov [signature], ebx        ; the signature is EBX, ECX, EDX in that order
    mov [signature + 4], ecx
    mov [signature + 8], edx
    mov si, msg_cpuid
    call uart_puts
    mov si, signature
    call uart_puts
    mov si, msg_newline
    call uart_puts

    mov si, signature
    mov di, expected_signature
    mov cx, 12
    repe cmpsb
    je .done
    mov si, msg_wrong_signature
    call uart_puts
    jmp fail

.done:
    mov si, msg_done
    call uart_puts
    xor ebx, ebx                ; status 0
    jmp exit

fail:
    mov ebx, 1
    ; fall through
exit:
    mov eax, HC_EXIT
    vmcall
    ; Only reached if the exit hypercall failed: stop here.
.halt:
    hlt
    jmp .halt

; Writes the NUL-terminated string at DS:SI to COM1, polling LSR before each byte.
; Clobbers AX, CX, DX, SI.
uart_puts:
.next:
    lodsb
    test al, al
    jz .ret
    mov ah, al
    mov cx, POLL_LIMIT
    mov dx, COM1_LSR
.poll:
    in al, dx
    test al, LSR_THR_EMPTY
    jnz .send
    loop .poll                  ; a UART that never drains must not hang the test
.send:
    mov al, ah
    mov dx, COM1
    out dx, al
    jmp .next
.ret:
    ret

msg_hello:          db "hello from real mode", 13, 10, 0
msg_hypercall:      db "real-mode hypercall works", 10
msg_hypercall_len   equ $ - msg_hypercall
msg_print_failed:   db "real: the print hypercall failed", 13, 10, 0
msg_cpuid:          db "cpuid: hypervisor ", 0
msg_wrong_signature: db "real: expected the signature sluicesluice", 13, 10, 0
msg_done:           db "real: done", 13, 10, 0
msg_newline:        db 13, 10, 0
expected_signature: db "sluicesluice"
signature:          times 12 db 0
                    db 0        ; terminates `signature` for uart_puts

    times 510 - ($ - $$) db 0
    dw 0xaa55
