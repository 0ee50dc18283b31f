# vmcounter: a tiny multiboot guest for QEMU's -kernel. It needs no kernel
# boot: it prints "vm-count N" on COM1 once per second of the CMOS clock,
# with N kept in guest RAM, so a migrated or restored VM shows whether its
# state came back (N goes on) or not (N restarts at 1). First it writes
# a word into every 4 KiB page of RAM above 4 MiB, so the whole RAM is in
# use and a copy of it has every page to send.
	.code32
	.section .text
	.globl _start
	.align 4
mb:	.long 0x1BADB002		# multiboot magic
	.long 0				# flags
	.long -0x1BADB002		# checksum
_start:
	mov	$stack_top, %esp
	cmp	$0x2BADB002, %eax	# a multiboot loader: %ebx has its info
	jne	0f
	testl	$1, (%ebx)		# mem_upper given
	jz	0f
	mov	8(%ebx), %ecx		# KiB of RAM above 1 MiB
	shl	$10, %ecx
	add	$0x100000, %ecx		# end of RAM
	mov	$0x400000, %edi
6:	cmp	%ecx, %edi
	jae	0f
	mov	%edi, (%edi)		# every page gets its own address
	add	$4096, %edi
	jmp	6b
0:	mov	$0xff, %bl		# last RTC second seen
1:	mov	$0, %al			# wait for the CMOS seconds to change
	out	%al, $0x70
	in	$0x71, %al
	cmp	%al, %bl
	je	1b
	mov	%al, %bl
	incl	count
	mov	$msg, %esi
2:	lodsb				# "vm-count "
	test	%al, %al
	jz	3f
	call	putc
	jmp	2b
3:	mov	count, %eax		# decimal digits, pushed in reverse
	mov	$10, %ecx
	xor	%edi, %edi
4:	xor	%edx, %edx
	div	%ecx
	push	%edx
	inc	%edi
	test	%eax, %eax
	jnz	4b
5:	pop	%eax
	add	$'0', %al
	call	putc
	dec	%edi
	jnz	5b
	mov	$'\n', %al
	call	putc
	jmp	1b
putc:	mov	$0x3f8, %dx
	out	%al, %dx
	ret
	.section .data
msg:	.asciz "vm-count "
count:	.long 0
	.section .bss
	.align 16
	.space 4096
stack_top:
