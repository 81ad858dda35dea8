; bursts-real: the classic IO bursts of PC firmware and boot code, in real mode, entered
; at 0000:7C00 (guest.entry = real:0x7c00).
;
; The real-mode counterpart of bursts64: each burst is a straight run of the
; instructions sluice's coalescer emulates (IN/OUT, MOV, ADD/SUB/.../SHL/SHR on
; registers, Jcc/LOOP inside the run), so a coalescing hypervisor can take it in one
; exit. Real mode matters because the coalescer decodes 16-bit code there (operand and
; address size 16, LOOP on CX, IP wrapping at 64 KiB) and must still leave exactly the
; registers the CPU would have left.
;
; Bursts, in order: PIC init with an io delay after every write, UART init, a polled
; 32-byte write (`ABCDEFGHIJKLMNOPQRSTUVWXYZABCD` CR LF), a CMOS read loop. Every burst
; starts from the same seeded registers and FLAGS (SEED), and at its end all general
; registers and EFLAGS are folded into a 32-bit checksum (CAPTURE; PUSHFD/PUSHAD, the
; first instructions after the burst, are outside the coalescer's subset, so a run ends
; there). The guest then prints `real bursts: regs XXXXXXXX` through the UART and exits
; with status 0. The checksum must be the same with coalescing on and off, and on every
; run: nothing time-dependent reaches a checksummed register. Interrupts stay off.
;
; Hypercall registers as in hello-real: 32-bit moves, since bits 63:32 cannot be written
; outside 64-bit mode.
;
; One 512-byte boot sector (0xAA55 at offset 510), like hello-real.

bits 16
org 0x7c00

COM1        equ 0x3f8
COM1_LSR    equ COM1 + 5
LSR_THR_EMPTY equ 0x20
POLL_LIMIT  equ 0xffff

HC_EXIT     equ 2

; EFLAGS bits a burst defines: CF PF AF ZF SF IF DF OF (the rest, like the reserved
; bit 1, IOPL or RF, say nothing about the burst).
FLAGS_CHECKED equ 0x0ed5
; FNV-1a's 32-bit offset basis, as a non-zero start value.
CHECKSUM_START equ 0x811c9dc5

; Every register a burst might leave alone gets a known value (from `seed`), so the
; checksum does not depend on what ran before. A call rather than inline code, to keep
; the guest in one sector; it runs before the burst's first IO, so natively either way.
%macro SEED 0
    call seed
%endmacro

; Folds the registers as the burst left them into `checksum`, then drops them.
%macro CAPTURE 0
    pushfd
    pushad
    call fold
    add sp, 36
%endmacro

start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    jmp 0:.flat                 ; CS = 0 too, so labels are linear addresses
.flat:

; PIC init as a BIOS or Linux's init_8259A does it: both masks closed, master ICW1-4
; (IRQ0-7 at vector 0x08, the BIOS layout, slave on input 2), slave ICW1-4 (IRQ8-15
; at 0x70, cascade identity 2), then the masks (all closed but the cascade). Each PIC
; write is followed by `out 0x80, al`, the io delay (outb_p). 24 OUTs, imm8 ports. No
; flag changes.
    SEED
    mov al, 0xff
    out 0x21, al
    out 0x80, al
    out 0xa1, al
    out 0x80, al
    mov al, 0x11
    out 0x20, al
    out 0x80, al
    mov al, 0x08
    out 0x21, al
    out 0x80, al
    mov al, 0x04
    out 0x21, al
    out 0x80, al
    mov al, 0x01
    out 0x21, al
    out 0x80, al
    mov al, 0x11
    out 0xa0, al
    out 0x80, al
    mov al, 0x70
    out 0xa1, al
    out 0x80, al
    mov al, 0x02
    out 0xa1, al
    out 0x80, al
    mov al, 0x01
    out 0xa1, al
    out 0x80, al
    mov al, 0xfb
    out 0x21, al
    out 0x80, al
    mov al, 0xff
    out 0xa1, al
    out 0x80, al
    CAPTURE

; UART init: IER = 0, LCR = DLAB, divisor 1 (115200), LCR = 8N1, FCR = 0xC7, MCR =
; DTR|RTS|OUT2. 7 OUTs through DX, the port as base + offset (16-bit ADD/SUB/INC/DEC);
; the last ADD defines every flag.
    SEED
    mov dx, COM1 + 1
    mov al, 0
    out dx, al
    add dx, 2
    mov al, 0x80
    out dx, al
    sub dx, 3
    mov al, 1
    out dx, al
    inc dx
    mov al, 0
    out dx, al
    add dx, 2
    mov al, 0x03
    out dx, al
    dec dx
    mov al, 0xc7
    out dx, al
    add dx, 2
    mov al, 0x0b
    out dx, al
    CAPTURE

; Polled write of 32 bytes: for each, poll LSR until THRE, then write THR. The bytes come
; from registers only: 'A' + BL (BL counting 0..25) for the first 30, then CR and LF as
; CX reaches 2 and 1. 32 LSR reads and 32 THR writes when THRE is always set (sluice's
; UART transmits at once); extra polls would change nothing checksummed. The last flag
; writer is `dec cx` (CF from the last CMP).
    SEED
    mov cx, 32
    mov bl, 0
.byte:
    mov dx, COM1_LSR
.poll:
    in al, dx
    test al, LSR_THR_EMPTY
    jz .poll
    mov al, 13
    cmp cx, 2
    je .send
    mov al, 10
    cmp cx, 1
    je .send
    mov al, bl
    add al, 'A'
    inc bl
    cmp bl, 26
    jne .send
    mov bl, 0
.send:
    mov dx, COM1
    out dx, al
    dec cx
    jnz .byte
    CAPTURE

; CMOS read loop: indices 0x0E-0x1D (diagnostic, shutdown and configuration bytes, not
; the clock, so the result stays the same once sluice emulates an RTC), index to 0x70,
; data from 0x71, folded into ESI with `add esi, esi; add esi, eax`. LOOP counts CX
; down (16-bit address size) and writes no flags, so `inc bl` decides them. 32 IO
; instructions; today the ports are unclaimed and every read gives 0xFF.
    SEED
    mov cx, 16
    mov bl, 0x0e
    mov esi, 0
.cmos:
    mov al, bl
    out 0x70, al
    in al, 0x71
    add esi, esi
    add esi, eax
    inc bl
    loop .cmos
    CAPTURE

    mov si, msg_regs
    call uart_puts
    mov eax, [checksum]
    call uart_hex32
    mov si, msg_newline
    call uart_puts

    mov eax, HC_EXIT
    xor ebx, ebx                ; status 0
    vmcall
    ; Only reached if the exit hypercall failed: stop here.
.halt:
    hlt
    jmp .halt

; The start values of every burst: FLAGS with every arithmetic flag set (0x8d5 plus the reserved bit 1), IF and DF
; clear. RET writes no flags.
seed:
    mov eax, 0xa4a5a6a7
    mov ecx, 0xc4c5c6c7
    mov edx, 0xd4d5d6d7
    mov ebx, 0xb4b5b6b7
    mov ebp, 0x54555657
    mov esi, 0x64656667
    mov edi, 0x74757677
    push word 0x08d7
    popf
    ret

; checksum = (checksum ^ value) * 33 for each of EDI, ESI, EBP, ESP (zeroed: where the
; stack is says nothing about a burst), EBX, EDX, ECX, EAX and EFLAGS (masked), as
; PUSHAD and PUSHFD left them above the return address.
fold:
    mov bp, sp
    and dword [bp + 34], FLAGS_CHECKED
    mov dword [bp + 14], 0
    lea si, [bp + 2]
    mov cx, 9
.next:
    mov eax, [si]
    xor eax, [checksum]
    mov edx, eax
    shl eax, 5
    add eax, edx
    mov [checksum], eax
    add si, 4
    loop .next
    ret

; Writes EAX as 8 hex digits. Clobbers EAX, BX, CX, DX.
uart_hex32:
    mov cx, 8
.digit:
    rol eax, 4
    mov bl, al
    and bl, 0x0f
    add bl, '0'
    cmp bl, '9'
    jbe .put
    add bl, 'a' - '0' - 10
.put:
    push cx
    call uart_putc
    pop cx
    loop .digit
    ret

; Writes the NUL-terminated string at DS:SI. Clobbers AX, BX, CX, DX, SI.
uart_puts:
.next:
    lodsb
    test al, al
    jz .ret
    mov bl, al
    call uart_putc
    jmp .next
.ret:
    ret

; Writes BL to COM1 after LSR shows THR empty (bounded, as in hello-real). Clobbers
; CX, DX; keeps EAX.
uart_putc:
    push ax
    mov cx, POLL_LIMIT
    mov dx, COM1_LSR
.poll:
    in al, dx
    test al, LSR_THR_EMPTY
    jnz .send
    loop .poll
.send:
    mov al, bl
    mov dx, COM1
    out dx, al
    pop ax
    ret

msg_regs:    db "real bursts: regs ", 0
msg_newline: db 13, 10, 0
checksum:    dd CHECKSUM_START

    times 510 - ($ - $$) db 0
    dw 0xaa55
