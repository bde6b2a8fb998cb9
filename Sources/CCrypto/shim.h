#ifndef EVENTLINE_CCRYPTO_SHIM_H
#define EVENTLINE_CCRYPTO_SHIM_H
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#endif
