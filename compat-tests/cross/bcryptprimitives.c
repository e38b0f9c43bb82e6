/*
 * ProcessPrng for Wine releases that lack bcryptprimitives.dll (Debian 12's Wine 8.0): Rust's
 * std takes its randomness from it on Windows. scripts/cross builds this into the Wine prefix it
 * runs the Windows binaries in, only when that Wine has no such DLL; real Windows has it.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
