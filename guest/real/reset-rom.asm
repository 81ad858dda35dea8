; reset-rom: a 4 KiB "firmware" image started the way a PC starts its BIOS ROM
; (guest.entry = firmware). The hypervisor places the image so that it ends at 1 MiB
; (the legacy BIOS area, linear 0xFF000-0xFFFFF here) and maps the same bytes just
; below 4 GiB (0xFFFFF000-0xFFFFFFFF), and starts the CPU in its reset state:
; CS selector 0xF000 with base 0xFFFF0000, IP 0xFFF0 (SDM Vol. 3A 10.1.4 "First
; Instruction Executed").
;
; The first instruction therefore runs from the high alias at 0xFFFFFFF0; its far jump
; reloads CS with 0xF000 (base 0xF0000), so everything after it runs from the low copy.
; Reaching the message proves both mappings and the reset-state CS. Output goes to
; COM1 by hand (there is no BIOS), then the exit hypercall ends the run with status 0.

bits 16
org 0xF000                      ; the image's first byte is at F000:F000 = 0xFF000

COM1        equ 0x3f8
COM1_LSR    equ COM1 + 5
HC_EXIT     equ 2

start:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ax, cs                  ; 0xF000 after the far jump
    mov ds, ax
    mov si, msg
.next:
    lodsb
    test al, al
    jz .done
    mov bl, al
    mov dx, COM1_LSR
.wait:
    in al, dx
    test al, 0x20               ; THR empty
    jz .wait
    mov dx, COM1
    mov al, bl
    out dx, al
    jmp .next
.done:
    mov eax, HC_EXIT            ; 32-bit forms: the hypervisor reads all of RAX/RBX
    xor ebx, ebx
    vmcall
    hlt
    jmp .done

msg: db "hello from the reset vector (F000:FFF0 via 0xFFFFFFF0, then F000:F000)", 13, 10, 0

    times 0xFF0 - ($ - $$) db 0xF4
reset:                          ; F000:FFF0, linear 0xFFFFFFF0 at reset
    jmp 0xF000:start
    times 0x1000 - ($ - $$) db 0xF4
