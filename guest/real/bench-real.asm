; bench-real: benchmark workloads in 16-bit code written the way PC firmware writes it,
; entered at 0000:7C00 (guest.entry = real:0x7c00).
;
; bench64's workloads are straight runs of the coalescer's register subset. Firmware does
; the same IO differently: its init sequences are tables in memory (`mov dx, [bx]`), its
; loops store what they read (`stosb`, `mov [di], eax`), every byte of a message goes
; through a `putc` that pushes and pops registers, waits are helpers reached with CALL,
; buffers are set up with `rep movsw`/`rep stosw` between the port accesses, and
; routines build stack frames. This guest measures how many exits that code takes.
;
; guest.arg arrives in RDI (only EDI is visible outside 64-bit mode, so bits 63:32 are
; not checked):
; - bits 7:0: the workload number (the `workloads` table below, guest/README.md); 0 runs
;   every workload in number order;
; - bits 31:8: how many times the workload runs back to back (0 means once).
; For each workload the guest reads sluice's IO counters (hypercall 3) before the first
; and after the last iteration and prints, through the print hypercall,
;   workload <name>: iterations <n>, io instructions <i>, io exits <e>, emulated <m>
;   checksum <name>: XXXXXXXX
; then `bench-real: done` and exits with status 0. The checksum folds the registers and
; EFLAGS every iteration left (from the same seeded start values) and the bytes the
; workload stored in its result buffer; it must be the same with coalescing off and on.
; Nothing reads a timer, so every run of one build prints the same checksums (a change
; to the code changes them: SI and DI end on addresses in the image). A device that never
; became ready (a bounded poll ran out) or answered what POST would reject (a PIC mask
; or UART register not reading back, the 8042's self test, the CMOS checksum) ends the
; guest with status 1 after `workload <name>: failed: <why>`; an arg naming no workload
; ends it with status 2. Interrupts stay off, and only the workloads do port IO (lines
; go out through the hypercall), so sluice-stats of a run with one workload selected
; counts that workload and nothing else.
;
; Every workload is a routine the harness CALLs; the first instruction after that CALL
; is PUSHFD (CAPTURE), outside the coalescer's subset, so even once the coalescer
; follows a RET out of the workload, a run ends at the end of the iteration.
;
; The image is larger than one sector: sluice loads the whole flat file at 0x7c00 (a
; PC BIOS would load only the first 512 bytes, so this guest runs under sluice only).
;
; Hypercall registers as in hello-real: 32-bit moves, since bits 63:32 cannot be written
; outside 64-bit mode (they stay zero: sluice starts the guest with them zero and every
; hypercall result used here fits in 32 bits).

bits 16
org 0x7c00

COM1            equ 0x3f8
COM1_LSR        equ COM1 + 5
LSR_THR_EMPTY   equ 0x20            ; PC16550D LSR bit 5, THRE
POLL_LIMIT      equ 0xffff          ; reads of a status port before a wait gives up

KBC_DATA        equ 0x60
KBC_STATUS      equ 0x64
KBC_OBF         equ 0x01            ; 8042 status bit 0: output buffer full
KBC_IBF         equ 0x02            ; 8042 status bit 1: input buffer full

CMOS_INDEX      equ 0x70
CMOS_DATA       equ 0x71
CMOS_NMI_OFF    equ 0x80            ; port 0x70 bit 7 masks NMI on the PC/AT

PCI_ADDRESS     equ 0xcf8
PCI_DATA        equ 0xcfc

HC_PRINT        equ 1
HC_EXIT         equ 2
HC_COUNTERS     equ 3

FAILED          equ 1
BAD_ARG         equ 2

; EFLAGS bits a burst defines: CF PF AF ZF SF IF DF OF (as in bursts-real).
FLAGS_CHECKED   equ 0x0ed5
; FNV-1a's 32-bit offset basis, as a non-zero start value.
CHECKSUM_START  equ 0x811c9dc5

; Work areas in the free RAM below the image (the stack grows down from 0x7c00, far
; above them). The result buffers are contiguous so that fw-post folds all of them.
RESULTS         equ 0x0600
RES_INIT        equ RESULTS             ; 4 bytes: both IMRs, UART LCR and MCR read back
RES_INIT_LEN    equ 4
RES_KBC         equ RESULTS + 0x10      ; 16 bytes: the controller's and keyboard's answers
RES_KBC_LEN     equ 16
RES_CMOS        equ RESULTS + 0x20      ; 32 bytes: CMOS bytes, the sum and its check
RES_CMOS_LEN    equ 32
RES_PCI         equ RESULTS + 0x40      ; 128 bytes: dword 0 of bus 0 devices 0-31
RES_PCI_LEN     equ 128
RES_VGA         equ RESULTS + 0xc0      ; 16 bytes: VGA registers read back
RES_VGA_LEN     equ 16
RESULTS_LEN     equ 0xd0
LINE            equ 0x0800              ; the line being printed
TEXT_SEGMENT    equ 0xb800              ; colour text mode's screen (plain RAM here)

; Every register the workload might leave alone gets a known value (from `seed`), so
; the checksum does not depend on what ran before.
%macro SEED 0
    call seed
%endmacro

; Folds the registers as the workload left them into `checksum`, then drops them.
%macro CAPTURE 0
    pushfd
    pushad
    call fold_regs
    add sp, 36
%endmacro

; One entry of an `out_table`: port (word), value (byte).
%macro OUTB 2
    dw %1
    db %2
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
    mov [arg], edi
    movzx ebx, di
    and bx, 0xff                ; the workload number
    mov eax, edi
    shr eax, 8                  ; the iterations
    jnz .counted
    inc eax
.counted:
    mov [iterations], eax
    cmp bx, WORKLOAD_COUNT
    ja bad_arg
    test bx, bx
    jnz .one
    mov bx, 1
.all:
    push bx
    call run_workload
    pop bx
    inc bx
    cmp bx, WORKLOAD_COUNT
    jbe .all
    jmp .done
.one:
    call run_workload
.done:
    mov di, LINE
    mov si, msg_done
    call append_str
    call print_line
    xor ebx, ebx                ; status 0
    jmp guest_exit

bad_arg:
    mov di, LINE
    mov si, msg_bad_arg
    call append_str
    mov eax, [arg]
    call append_hex32
    mov si, msg_bad_arg_why
    call append_str
    call print_line
    mov ebx, BAD_ARG
    ; fall through
guest_exit:
    mov eax, HC_EXIT
    vmcall
    ; Only reached if the exit hypercall failed: stop here.
.halt:
    hlt
    jmp .halt

; Runs workload BX (1-based) `iterations` times and prints its two lines.
run_workload:
    dec bx
    shl bx, 3
    lea si, [workloads + bx]
    mov [current], si
    mov ax, [si + 2]
    mov [current_routine], ax
    mov dword [checksum], CHECKSUM_START
    mov word [failure], 0
    call counters
    mov [before_exits], eax
    mov [before_insns], ebx
    mov [before_emulated], ecx
    mov eax, [iterations]
    mov [left], eax
.iteration:
    SEED
    call [current_routine]
    CAPTURE
    cmp word [failure], 0
    jne .failed
    dec dword [left]
    jnz .iteration
    call counters
    sub eax, [before_exits]
    mov [spent_exits], eax
    sub ebx, [before_insns]
    mov [spent_insns], ebx
    sub ecx, [before_emulated]
    mov [spent_emulated], ecx

    ; The bytes the workload stored, after its last iteration.
    mov si, [current]
    mov cx, [si + 6]
    mov si, [si + 4]
    jcxz .folded
.fold:
    lodsb
    movzx eax, al
    call fold_eax
    loop .fold
.folded:

    mov di, LINE
    mov si, msg_workload
    call append_str
    call append_name
    mov si, msg_iterations
    call append_str
    mov eax, [iterations]
    call append_dec
    mov si, msg_io_insns
    call append_str
    mov eax, [spent_insns]
    call append_dec
    mov si, msg_io_exits
    call append_str
    mov eax, [spent_exits]
    call append_dec
    mov si, msg_emulated
    call append_str
    mov eax, [spent_emulated]
    call append_dec
    mov al, 10
    stosb
    call print_line

    mov di, LINE
    mov si, msg_checksum
    call append_str
    call append_name
    mov si, msg_colon
    call append_str
    mov eax, [checksum]
    call append_hex32
    mov al, 10
    stosb
    jmp print_line              ; and return from there

.failed:
    mov di, LINE
    mov si, msg_workload
    call append_str
    call append_name
    mov si, msg_failed
    call append_str
    mov si, [failure]
    call append_str
    mov al, 10
    stosb
    call print_line
    mov ebx, FAILED
    jmp guest_exit

; The start values of every iteration: FLAGS with every arithmetic flag set (0x8d5
; plus the reserved bit 1), IF and DF clear. RET writes no flags.
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

; Folds EDI, ESI, EBP, ESP (zeroed: where the stack is says nothing about a workload),
; EBX, EDX, ECX, EAX and EFLAGS (masked), as PUSHAD and PUSHFD left them above the
; return address, into `checksum`.
fold_regs:
    mov bp, sp
    and dword [bp + 34], FLAGS_CHECKED
    mov dword [bp + 14], 0
    lea si, [bp + 2]
    mov cx, 9
.next:
    mov eax, [si]
    call fold_eax
    add si, 4
    loop .next
    ret

; checksum = (checksum ^ EAX) * 33. Clobbers EAX, EDX.
fold_eax:
    xor eax, [checksum]
    mov edx, eax
    shl eax, 5
    add eax, edx
    mov [checksum], eax
    ret

; EAX = IO exits, EBX = IO instructions, ECX = instructions emulated, so far (the low
; 32 bits; the differences the guest prints fit in them).
counters:
    mov eax, HC_COUNTERS
    vmcall
    ret

; --- printing: lines are built at LINE with ES:DI and printed by the hypercall ------

; Appends the NUL-terminated string at DS:SI. Clobbers AL, SI.
append_str:
.next:
    lodsb
    test al, al
    jz .ret
    stosb
    jmp .next
.ret:
    ret

; Appends the current workload's name. Clobbers AL, SI.
append_name:
    mov si, [current]
    mov si, [si]
    jmp append_str

; Appends EAX in decimal. Clobbers EAX, EBX, CX, EDX.
append_dec:
    mov ebx, 10
    xor cx, cx
.divide:
    xor edx, edx
    div ebx
    push dx
    inc cx
    test eax, eax
    jnz .divide
.digit:
    pop ax
    add al, '0'
    stosb
    loop .digit
    ret

; Appends EAX as 8 hex digits. Clobbers EAX, CX.
append_hex32:
    mov cx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .put
    add al, 'a' - '0' - 10
.put:
    stosb
    pop eax
    loop .digit
    ret

; Prints LINE up to DI with the print hypercall (RBX = linear address = offset, since
; DS = 0). A refused print ends the guest with status 1: there is no other channel.
print_line:
    movzx ecx, di
    sub ecx, LINE
    mov ebx, LINE
    mov eax, HC_PRINT
    vmcall
    test eax, eax
    jnz .failed
    ret
.failed:
    mov ebx, FAILED
    jmp guest_exit

; --- the workloads ------------------------------------------------------------------
;
; Written as a BIOS writes them: tables, helpers reached with CALL, memory operands,
; string instructions. None reads a timer. Waits are bounded (POLL_LIMIT reads); one
; that runs out, or an answer POST would reject, sets `failure` to the reason, which
; fails the workload.
;
; Their code starts at 0x8000 and stays inside that one 4 KiB page, and every routine
; starts a 64-byte line (as bench64's `.p2align 6`), so what one run may cover under
; the `page` and `line` extents does not depend on how long the harness above is.
; (Firmware crosses such boundaries anywhere; a benchmark must not change its numbers
; when an unrelated line is edited.)
WORKLOADS_PAGE  equ 0x8000
    times WORKLOADS_PAGE - 0x7c00 - ($ - $$) db 0
workload_code:

; Workload 1, fw-init-table: the POST's chip initialisation as one table of port/value
; pairs in memory, each write followed by the `out 0x80` io delay in a helper; then the
; PIC masks and the UART's LCR and MCR read back into the result buffer and compared
; with what the table wrote, as POST checks that the chips are there. 22 writes, 22
; delays, 4 reads: 48 IO.
    align 64
fw_init_table:
    mov bx, init_table
    call out_table
    mov di, RES_INIT
    in al, 0x21
    stosb
    in al, 0xa1
    stosb
    mov dx, COM1 + 3
    in al, dx
    stosb
    inc dx
    in al, dx
    stosb
    cmp dword [RES_INIT], 0x0b03fffb    ; 0xFB, 0xFF, 0x03, 0x0B as written
    je .ret
    mov word [failure], msg_readback
.ret:
    ret

; Writes the {port (word), value (byte)} entries at BX, up to a port of 0, each followed
; by an io delay. Clobbers AL, BX, DX.
    align 64
out_table:
.next:
    mov dx, [bx]
    test dx, dx
    jz .done
    mov al, [bx + 2]
    out dx, al
    call io_delay
    add bx, 3
    jmp .next
.done:
    ret

; The PC's io delay: a write to the unused diagnostic port 0x80 (Linux's outb_p).
    align 64
io_delay:
    out 0x80, al
    ret

init_table:
    ; 8259A pair (Intel 8259A datasheet, "Initialization command words"): ICW1 edge
    ; triggered, cascaded, ICW4 needed; ICW2 the vector base (0x08 master, 0x70 slave:
    ; the BIOS layout); ICW3 slave on IR2 / cascade identity 2; ICW4 8086 mode.
    OUTB 0x20, 0x11
    OUTB 0x21, 0x08
    OUTB 0x21, 0x04
    OUTB 0x21, 0x01
    OUTB 0xa0, 0x11
    OUTB 0xa1, 0x70
    OUTB 0xa1, 0x02
    OUTB 0xa1, 0x01
    ; OCW1: every line masked but the cascade (interrupts stay off anyway).
    OUTB 0x21, 0xfb
    OUTB 0xa1, 0xff
    ; 8254 (Intel 82C54 datasheet, "Control word format"): counter 0 mode 3, LSB then
    ; MSB, count 0 (65536: the BIOS's 18.2 Hz tick); counter 1 mode 2, LSB only, count
    ; 18 (the AT's DRAM refresh, 15 us).
    OUTB 0x43, 0x36
    OUTB 0x40, 0x00
    OUTB 0x40, 0x00
    OUTB 0x43, 0x54
    OUTB 0x41, 18
    ; COM1 (PC16550D datasheet, register summary): IER 0, LCR DLAB, divisor 1 (115200
    ; baud), LCR 8N1, FCR FIFOs on and cleared (trigger 14), MCR DTR|RTS|OUT2.
    OUTB COM1 + 1, 0x00
    OUTB COM1 + 3, 0x80
    OUTB COM1 + 0, 0x01
    OUTB COM1 + 1, 0x00
    OUTB COM1 + 3, 0x03
    OUTB COM1 + 2, 0xc7
    OUTB COM1 + 4, 0x0b
    dw 0

; Workload 2, fw-kbc: the keyboard controller's POST (PC AT Technical Reference,
; "Keyboard controller" commands; the keyboard's commands from the same book): flush,
; controller self test (0xAA -> 0x55), keyboard interface test (0xAB -> 0x00), read the
; command byte (0x20), write it (0x60: 0x65, translate, aux off, system flag, keyboard
; interrupt), enable the keyboard (0xAE), reset the keyboard (0xFF -> ACK, BAT 0xAA),
; identify it (0xF2 -> ACK 0xAB 0x83), read the command byte again. Every answer is
; stored with STOSB; the self test, interface test and reset answers are checked. 1 +
; 9 writes and 9 reads, each after a status poll: 37 IO.
    align 64
fw_kbc:
    mov di, RES_KBC
    mov cx, RES_KBC_LEN / 2
    xor ax, ax
    rep stosw
    mov di, RES_KBC
    call kbc_flush
    mov al, 0xaa
    call kbc_command
    call kbc_read_store
    mov al, 0xab
    call kbc_command
    call kbc_read_store
    mov al, 0x20
    call kbc_command
    call kbc_read_store
    mov al, 0x60
    call kbc_command
    mov al, 0x65
    call kbc_write_data
    mov al, 0xae
    call kbc_command
    mov al, 0xff
    call kbc_write_data
    call kbc_read_store
    call kbc_read_store
    mov al, 0xf2
    call kbc_write_data
    call kbc_read_store
    call kbc_read_store
    call kbc_read_store
    mov al, 0x20
    call kbc_command
    call kbc_read_store
    cmp word [RES_KBC], 0x0055          ; self test, interface test
    jne .bad
    cmp word [RES_KBC + 3], 0xaafa      ; reset: ACK, BAT passed
    je .ret
.bad:
    mov word [failure], msg_kbc_test
.ret:
    ret

; Reads and drops whatever the output buffer holds (at most 16 bytes). Clobbers AL, CX.
    align 64
kbc_flush:
    mov cx, 16
.next:
    in al, KBC_STATUS
    test al, KBC_OBF
    jz .ret
    in al, KBC_DATA
    loop .next
.ret:
    ret

; Waits until the controller's input buffer is empty. Clobbers AL, CX.
    align 64
kbc_wait_input:
    mov cx, POLL_LIMIT
.poll:
    in al, KBC_STATUS
    test al, KBC_IBF
    jz .ret
    loop .poll
    mov word [failure], msg_poll_ran_out
.ret:
    ret

; Writes the command AL to port 0x64 once the controller takes input.
    align 64
kbc_command:
    push cx
    push ax
    call kbc_wait_input
    pop ax
    out KBC_STATUS, al
    pop cx
    ret

; Writes AL to port 0x60 (a command argument or a byte for the keyboard).
    align 64
kbc_write_data:
    push cx
    push ax
    call kbc_wait_input
    pop ax
    out KBC_DATA, al
    pop cx
    ret

; Waits for the output buffer, reads it and stores the byte at ES:DI (STOSB).
    align 64
kbc_read_store:
    push cx
    mov cx, POLL_LIMIT
.poll:
    in al, KBC_STATUS
    test al, KBC_OBF
    jnz .full
    loop .poll
    mov word [failure], msg_poll_ran_out
.full:
    in al, KBC_DATA
    stosb
    pop cx
    ret

; Workload 3, fw-cmos-read: CMOS bytes named by a zero-terminated index table (`cmp
; byte [bx], 0`), each index written with NMI masked and the byte stored with STOSB;
; then POST's CMOS checksum check (PC AT Technical Reference, "CMOS RAM address map":
; bytes 0x10-0x2D summed, against the word at 0x2E, high byte first) in a register loop,
; the sum and the difference stored (a difference fails the workload, as "CMOS
; checksum error" stops a POST); the index left at 0x0D with NMI enabled. None of
; the bytes is the clock, register A (update in progress) or C (flags read-to-clear),
; so every read is the same whenever it happens. 15 + 30 + 2 pairs and 1 write: 95 IO.
    align 64
fw_cmos_read:
    mov di, RES_CMOS
    mov cx, RES_CMOS_LEN / 2
    xor ax, ax
    rep stosw
    mov di, RES_CMOS
    mov bx, cmos_indices
.next:
    cmp byte [bx], 0
    je .checksum
    mov al, [bx]
    or al, CMOS_NMI_OFF
    out CMOS_INDEX, al
    in al, CMOS_DATA
    stosb
    inc bx
    jmp .next
.checksum:
    xor si, si
    xor ah, ah
    mov cl, 0x10
.add:
    mov al, cl
    or al, CMOS_NMI_OFF
    out CMOS_INDEX, al
    in al, CMOS_DATA
    add si, ax
    inc cl
    cmp cl, 0x2e
    jne .add
    mov al, 0x2e | CMOS_NMI_OFF
    out CMOS_INDEX, al
    in al, CMOS_DATA
    mov ah, al
    mov al, 0x2f | CMOS_NMI_OFF
    out CMOS_INDEX, al
    in al, CMOS_DATA
    mov [di], si
    sub ax, si                  ; 0 when the stored checksum is right
    mov [di + 2], ax
    mov al, 0x0d
    out CMOS_INDEX, al
    cmp word [di + 2], 0
    je .ret
    mov word [failure], msg_cmos_checksum
.ret:
    ret

; Status B and D, diagnostic and shutdown status, the floppy, disk and equipment bytes,
; the memory sizes (base, extended, extended by POST, above 16 MiB).
cmos_indices:
    db 0x0b, 0x0d, 0x0e, 0x0f, 0x10, 0x12, 0x14, 0x15, 0x16, 0x17, 0x18
    db 0x30, 0x31, 0x34, 0x35
    db 0

; Workload 4, fw-pci-scan: bus 0, devices 0-31, function 0, through PCI configuration
; mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2: the address dword to
; 0xCF8, the data dword at 0xCFC) with 32-bit operands (66h) in a helper; each ID dword
; stored with `mov [di], eax`, the devices found counted in a local of a stack frame (`push
; bp; mov bp, sp`, left with LEAVE). 64 IO.
    align 64
fw_pci_scan:
    push bp
    mov bp, sp
    sub sp, 2
    mov word [bp - 2], 0
    mov di, RES_PCI
    mov cx, RES_PCI_LEN / 2
    xor ax, ax
    rep stosw
    mov di, RES_PCI
    mov ebx, 0x80000000         ; enable bit, bus 0, device 0, function 0, register 0
    mov cx, 32
.device:
    mov eax, ebx
    call pci_read32
    mov [di], eax
    add di, 4
    cmp ax, 0xffff              ; vendor ID of an absent device
    je .absent
    inc word [bp - 2]
.absent:
    add ebx, 0x800              ; the device number is bits 15:11
    loop .device
    mov ax, [bp - 2]
    leave
    ret

; EAX = configuration address; returns the configuration dword in EAX. Keeps DX.
    align 64
pci_read32:
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    mov dx, PCI_DATA
    in eax, dx
    pop dx
    ret

; Workload 5, fw-vga-setup: a VGA BIOS setting text mode 3 (register values from IBM's
; VGA Technical Reference, mode 03h): the sequencer held in reset and programmed with
; index/data words (`lodsw; out dx, ax` from a table), the miscellaneous output
; register, the sequencer released; the CRTC parameter table copied into a stack frame
; with REP MOVSW, its write-protect bit (register 0x11 bit 7) cleared in the copy, and
; written out as index/data words; the graphics controller from a word table; the
; attribute controller (flip-flop reset by reading input status 1, then index and value
; bytes to 0x3C0, then 0x20 to give the palette back to the display); the text screen
; cleared with REP STOSW; three registers read back. sluice has no VGA: writes are
; dropped and reads give 0xFF, as on an empty ISA bus. 89 IO.
CRTC_COUNT      equ 25
CRTC_FRAME      equ 26                  ; CRTC_COUNT rounded up to words
ATTR_COUNT      equ 20
    align 64
fw_vga_setup:
    push bp
    mov bp, sp
    sub sp, CRTC_FRAME
    push si
    push di
    mov dx, 0x3c4
    mov si, vga_sequencer
    call out_words
    mov dx, 0x3c2
    mov al, 0x67
    out dx, al
    mov dx, 0x3c4
    mov ax, 0x0300              ; sequencer reset register: both resets off
    out dx, ax

    mov si, vga_crtc
    lea di, [bp - CRTC_FRAME]
    mov cx, CRTC_FRAME / 2
    rep movsw
    and byte [bp - CRTC_FRAME + 0x11], 0x7f
    mov dx, 0x3d4
    mov ax, 0x0011              ; unprotect registers 0-7 first
    out dx, ax
    lea si, [bp - CRTC_FRAME]
    xor bl, bl
.crtc:
    lodsb
    mov ah, al
    mov al, bl
    out dx, ax
    inc bl
    cmp bl, CRTC_COUNT
    jb .crtc

    mov dx, 0x3ce
    mov si, vga_graphics
    call out_words

    mov dx, 0x3da
    in al, dx
    mov dx, 0x3c0
    mov si, vga_attributes
    xor bl, bl
.attribute:
    mov al, bl
    out dx, al
    lodsb
    out dx, al
    inc bl
    cmp bl, ATTR_COUNT
    jb .attribute
    mov al, 0x20
    out dx, al

    push es
    mov ax, TEXT_SEGMENT
    mov es, ax
    xor di, di
    mov ax, 0x0720              ; a space, light grey on black
    mov cx, 80 * 25
    rep stosw
    pop es

    mov di, RES_VGA
    mov cx, RES_VGA_LEN / 2
    xor ax, ax
    rep stosw
    mov di, RES_VGA
    mov dx, 0x3cc               ; miscellaneous output, read port
    in al, dx
    stosb
    mov dx, 0x3d4
    mov al, 0x0a                ; cursor start
    out dx, al
    inc dx
    in al, dx
    stosb
    dec dx
    mov al, 0x0b                ; cursor end
    out dx, al
    inc dx
    in al, dx
    stosb

    pop di
    pop si
    mov sp, bp
    pop bp
    ret

; Writes the index/data words at DS:SI to port DX (`out dx, ax`: AL to DX, AH to
; DX + 1), up to the word 0xFFFF. Clobbers AX, SI.
    align 64
out_words:
.next:
    lodsw
    cmp ax, 0xffff
    je .done
    out dx, ax
    jmp .next
.done:
    ret

vga_sequencer:
    dw 0x0100                   ; reset: synchronous reset
    dw 0x0001                   ; clocking mode
    dw 0x0302                   ; map mask: planes 0 and 1
    dw 0x0003                   ; character map select
    dw 0x0204                   ; memory mode: extended memory, odd/even
    dw 0xffff
vga_crtc:
    db 0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f
    db 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00
    db 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3
    db 0xff
    times CRTC_FRAME - CRTC_COUNT db 0
vga_graphics:
    dw 0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x1005, 0x0e06, 0x0007, 0xff08
    dw 0xffff
vga_attributes:
    db 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07
    db 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f
    db 0x0c, 0x00, 0x0f, 0x08

; Workload 6, fw-uart-puts: the POST banner (64 bytes with CR LF) on COM1, each byte
; read with LODSB and written by `putc`, which saves and restores its registers and
; polls LSR for THRE before writing THR. 128 IO while THRE is always set (sluice's UART
; sends at once).
    align 64
fw_uart_puts:
    mov si, banner
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    ret

; Writes AL to COM1 once LSR shows THR empty. Keeps every register.
    align 64
putc:
    push dx
    push cx
    push ax
    mov dx, COM1_LSR
    mov cx, POLL_LIMIT
.poll:
    in al, dx
    test al, LSR_THR_EMPTY
    jnz .ready
    loop .poll
    mov word [failure], msg_poll_ran_out
.ready:
    pop ax
    mov dx, COM1
    out dx, al
    pop cx
    pop dx
    ret

banner:
    db "bench-real: the POST banner, 64 bytes, each by putc (CALL/RET)", 13, 10, 0
BANNER_LEN      equ $ - banner - 1
    ; An assembly error unless the banner is 64 bytes (a negative TIMES count fails).
    times -(BANNER_LEN - 64) * (BANNER_LEN - 64) db 0

; Workload 7, fw-post: workloads 1-6 in a row, as one POST would run them. 461 IO.
    align 64
fw_post:
    call fw_init_table
    call fw_kbc
    call fw_cmos_read
    call fw_pci_scan
    call fw_vga_setup
    call fw_uart_puts
    ret

workload_code_end:
    ; An assembly error if the workloads outgrow their page (a negative TIMES count).
    times -((workload_code_end - workload_code) >> 12) db 0

; --- the workload table --------------------------------------------------------------
;
; Workload n is entry n - 1: name, routine, result buffer, its length. The numbers and
; names are an interface (`cargo xtask bench` selects by number and reads the names):
; append, never reorder.
workloads:
    dw name_init_table, fw_init_table, RES_INIT, RES_INIT_LEN
    dw name_kbc, fw_kbc, RES_KBC, RES_KBC_LEN
    dw name_cmos_read, fw_cmos_read, RES_CMOS, RES_CMOS_LEN
    dw name_pci_scan, fw_pci_scan, RES_PCI, RES_PCI_LEN
    dw name_vga_setup, fw_vga_setup, RES_VGA, RES_VGA_LEN
    dw name_uart_puts, fw_uart_puts, 0, 0
    dw name_post, fw_post, RESULTS, RESULTS_LEN
WORKLOAD_COUNT  equ ($ - workloads) / 8

name_init_table:    db "fw-init-table", 0
name_kbc:           db "fw-kbc", 0
name_cmos_read:     db "fw-cmos-read", 0
name_pci_scan:      db "fw-pci-scan", 0
name_vga_setup:     db "fw-vga-setup", 0
name_uart_puts:     db "fw-uart-puts", 0
name_post:          db "fw-post", 0

msg_workload:       db "workload ", 0
msg_iterations:     db ": iterations ", 0
msg_io_insns:       db ", io instructions ", 0
msg_io_exits:       db ", io exits ", 0
msg_emulated:       db ", emulated ", 0
msg_checksum:       db "checksum ", 0
msg_colon:          db ": ", 0
msg_failed:         db ": failed: ", 0
msg_poll_ran_out:   db "a status poll ran out (the device never became ready)", 0
msg_readback:       db "the PIC masks or the UART's LCR and MCR did not read back as written", 0
msg_kbc_test:       db "the 8042 or the keyboard failed a test (expected 0x55, 0x00, then 0xFA 0xAA after the reset)", 0
msg_cmos_checksum:  db "CMOS checksum error (bytes 0x10-0x2D against 0x2E-0x2F)", 0
msg_done:           db "bench-real: done", 10, 0
msg_bad_arg:        db "bench-real: arg 0x", 0
msg_bad_arg_why:    db ": no such workload (bits 7:0 workload 1..=7 or 0 for all, bits 31:8 iterations)", 10, 0

    ; msg_bad_arg_why names the workload count: an assembly error if it changes.
    times -(WORKLOAD_COUNT - 7) * (WORKLOAD_COUNT - 7) db 0

    align 4
checksum:           dd 0
arg:                dd 0
iterations:         dd 0
left:               dd 0
before_exits:       dd 0
before_insns:       dd 0
before_emulated:    dd 0
spent_exits:        dd 0
spent_insns:        dd 0
spent_emulated:     dd 0
current:            dw 0
current_routine:    dw 0
failure:            dw 0                ; the reason the workload failed, or 0
