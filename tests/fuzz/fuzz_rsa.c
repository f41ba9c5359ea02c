/*
 * fuzz_rsa.c - differential: the RSA public operation and RS256 check that
 * bm_jwt.c does with its own Montgomery arithmetic, against mbedTLS's, on
 * both of its row implementations (mulx/adcx/adox where the CPU has them,
 * and the portable C rows).  Any disagreement aborts.
 *
 * Input: byte 0 = mode (low 2 bits) | key << 2 (keys: the table below).
 *
 *   mode 0, 1  raw public operation on a modulus from the input:
 *              b1 b2  k = 1 + (b1 b2) % 512 bytes of N and of s
 *              b3     exponent: bits 0-1: 3, 65537, 8 input bytes, the same
 *                     made odd; bits 4-5: s from input, N - 1 - s[k-1],
 *                     N + s[k-1] (mod 2^8k), s with N's upper half;
 *                     bit 7: N as given (else odd, top byte non-zero)
 *              b4     fill for a short input: 00, FF, the input again,
 *                     xorshift bytes
 *              then N, then s.
 *              bm_jwt_rsa_public must decline (BM_EINVAL) exactly the N and
 *              e it documents, say BM_ERANGE exactly where s >= N and
 *              mbedtls_rsa_public refuses, and otherwise give its bytes.
 *   mode 2     crafted block: the token's payload carries input bytes; the
 *              correct PKCS#1 v1.5 block for its hash is edited as the input
 *              says (set, xor, DigestInfo moved left with garbage after the
 *              hash as in Bleichenbacher's e = 3 forgery, a byte inserted)
 *              and signed raw with the private key, so s^e mod N is the
 *              edited block.  It must verify exactly when no edit changed
 *              it.
 *   mode 3     signature from the input: the valid one xored with input
 *              bytes, or input bytes as they are.
 *
 * In modes 2 and 3, bm_jwt_verify (keys of 2048 bits and up: the daemons'
 * path, through bm_jwt_key_parse), bm_jwt_rsa_verify and
 * mbedtls_rsa_rsassa_pkcs1_v15_verify must agree, and so must the public
 * operations.  Keys: e = 3, 65537 and 2^61 - 1; 8 to 64 limbs, odd and even
 * counts, top limb full or holding one bit.  Test keys only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "bm_b64.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_jwt.h"
#include "rsa_testutil.h"

#define NOW   1800000000
#define K_MAX 512

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char k512_e3[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIBUwIBADANBgkqhkiG9w0BAQEFAASCAT0wggE5AgEAAkEAvtsU7neMqU/YzTON\n"
	"LujdNVqX8/08moW2862lmug6MZ1lnrHkvkfdZ5F2EgnTF6+fJOh6z7vUIjEYsMJp\n"
	"fU8TmwIBAwJAfzy4nvpdxjU7M3ezdJs+I5G6oqjTEa5598kZEfAmy70cUzR8SrV5\n"
	"vJ6Pqm/A/pmAFXiIHTnwGq1WKdslB0ZuuwIhAOzQXINpyyrXmVuzIwYBofJQpOME\n"
	"pnHqPgiovtwfFT/VAiEAzlGGpuRse/UKQt8/K5gnbLQOy58+eg/vDsk61dNQLa8C\n"
	"IQCd4D2s8TIcj7uSd2yuq8FMNcNCAxmhRtQFxdSSv2N/4wIhAImLrxntnaf4sYHq\n"
	"Kh0QGkh4Cd0U1FFf9LSGJzk3iskfAiBUt0OH0bWXXiZXu86A6l0zw8weSQZm8cTF\n"
	"NET2ZP4Icg==\n"
	"-----END PRIVATE KEY-----\n";

static const char k1032_e65537[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIICegIBADANBgkqhkiG9w0BAQEFAASCAmQwggJgAgEAAoGCALVV22cZUhp+OCP+\n"
	"fpeNNRcKaGYwJuG3cr7qaQBo5aYb6EIDTKGgkKjEFEAP8UskkZoWtWxGUcW1S+4Z\n"
	"144t/sXuoHNZ5w7x/BAd+Krw9KHk2/ByWX5XXKUGnml8Q6NJu/V2YxwGZwRZMsuh\n"
	"VauKO9TSIEXaCTloSwUn63FbOf20EQIDAQABAoGBWcDTReZ8guxycS5oDi8wVeUq\n"
	"41l2BUa9ns17h15kPKGXhgUICv/kWgQjWcoKTn0dLD2NMrhjhQ5FNObJkHAnqFct\n"
	"q/xkVnZRhGSN05st9ZgebNm0LgfYdeOlKiDDX/NzPH297Ai4ROIztzpaw48PKh9i\n"
	"TPoDD9+rado6ICnTJp2ZAkENfuagprEB+quZ5OVjGCC6dVRODXQqHEaCijtAlhNP\n"
	"kEP2DsWaJiwnbL/CB0rU4uaxsdRy6pspZbpfjsB1iam8XwJBDW/AAVWO3NP+C8Eg\n"
	"KXJ+TuCcvZUrPnO7d4Go8CvkPcOVNW5qGbNoWHidYlAlcOcGGSLJofY+Ykn3SdJ/\n"
	"11CkZY8CQQu2sJCR/iL8osMBZIQ9JfMQ8WqJzODcB+s39bPaTsqJKiPAsIxaQ4q4\n"
	"njvXvoDGrHthIUfZD3HABSL5sVyTbwq7AkEHK7ys+Zxk/j52x3sCo7gFIJqGEzYg\n"
	"/mLuRKSEiOgmjlrzSRoW3Uiy7qwP6/YPazw17fruFRz2F8OCAnV30/HowQJBB4wj\n"
	"ZNWYSPwY8SyuE3bsPbmbUVlmEhyblW6w5oYhPumBkWBp8V7uBAake7j4ALVzm9+A\n"
	"6mtqFQTZFIJ6/cO8oTE=\n"
	"-----END PRIVATE KEY-----\n";

static const char k2048_e65537[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCuIjV/4jcXCarl\n"
	"GmyFSbigCXOHGw6B+GbvAhRLOKq9pt7L4j6RKrZoeylunmUSXnh++ob5IrId0tBj\n"
	"jK18ID6oyp6u2fTNG4XLfq1waMsUIyidAkZy7lMlIaLB5OKEr5BlYMYHYRzcT7r3\n"
	"x5ljQPE8bHS4D/SHXCCR4tPM2fa8TuyqmP8JeCsXvDTbpX6vNKBO0LFhUJz7LvPg\n"
	"mtIOrSYfyGB1pmpPhhMXTLDNSAQCo94y9AuOubIK5maCVR0oeaAb3SWJeBEmHvta\n"
	"k3b87YQUewaTnO3zo1FT57w3AadG7gk1hcxLTvDpJo5OHf6PPhkI9iQlbyS2Tw85\n"
	"N+zjbynzAgMBAAECggEAFQ6T85vyV3nWzY+NcezBQ7EA5GSUM4lLQTm6JIJ8uyRT\n"
	"qsn4EOveVPIXx4Wl6Tu9THWVHslgSpT0mCUp0WnAyf5+g9xdavQaEMqHxKEXdZ7u\n"
	"yVW+GSXSrhnMKbA46Bym1GuIZtoKeGW30UC0vrjasxjWYG+lfTzZv2pzfEEbQhgC\n"
	"EJaEPU0kaPRIInnw4WpQ9PSaf/zSWCPh2F+3mulVhgtxUomuVfykYfTnaOjKlO46\n"
	"3A25sPFoZJ4SCCOQbVxCciumqiMKvuDPkT0TZ3itRTIGn7gVdrj4zUrDJ3ocsczq\n"
	"yMYnD4GIbXcddTfnICgAtOdTMTiZhJnDzt9zswU2AQKBgQDcO8kjeScaFQgysRD5\n"
	"D/vsCciWssxj679Iyed27XhyyQIC2wITTNKxPbiEG9BRRF5QWvhIAmf7Vc6hBoHB\n"
	"cpqeyZ1hcy3BI7E9JaXM3LQFpyipwatCHgS/n23ePfkNZdHooPJkM5htn17zDhny\n"
	"EnlXUq5uf3q4zq6KB89qk50E8wKBgQDKadGLAZ9pABi50NcmtGfi+IU7D/a5ydD3\n"
	"Bj2EEcRemKx6rWCjIHPMXYbSWSUmCoMx1gbBTDHicdLIrMcIVtil02SILBJmbiQD\n"
	"dmKtTmH6R750JqbJjy9l7RWuetmgkaAIfhARkHldn4a2Z+4zcVRIWnEu7YMk1QLv\n"
	"D6Sz+nKHAQKBgDdDNUSWeQ5darI1pjmpHiDrj47pDMqh9FzSdSdtjUTYVY3b4Nhw\n"
	"9YmOIEfeJtbNnhDx0s1W9TqnHHNhi5u8IzpnAvvaCAgn6aibUtBmLTIh8N0wAMZV\n"
	"fAGNguc6i80l2JdUE567J6uSSyQYTMBmjFYyJB0MFgJbsoZmUVC/+62rAoGAX2Ox\n"
	"CYZRPqV6AY+m5Smdz7v45ZWnW3T9knyRXv0UgtQGbKXqZdX0XHozAExckmnf3AuW\n"
	"EWA8HhAwGrw56/cpkDRoKzhBz53WQP94j13iFJXc7lYMwe5Fkw5A6oIgr2gReA8Y\n"
	"uX5Rg8qbLLkb64hcBOECd/Acnq33/PttThgYAwECgYA2bAyNS6IsR6omduEE0JQm\n"
	"l92xjc4T6EvPKG65sFtX2dVlkenWWajYirCgJEOwZYm5KjVSsjElGjyXbz6zRzy3\n"
	"Xm88IBTzgbesFUq3Cqj/veiKsvDqnZDoH0t3fMSpYb+RnYyeyMf6xCqHM7XEOY3a\n"
	"cTZKmq9wwk4DsAiRcwPg8w==\n"
	"-----END PRIVATE KEY-----\n";

static const char k2049_e3[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQEytCRBaVfqEJsg\n"
	"lnMbQPZ4ynLlEKe6szFKg7Bx4pIpkx6KKFRu7Y/AAsvdVZV3oCdN834RqWwywgwB\n"
	"tkDG+4QeZvhE0RUkrQfRPAUnLPwSLxmHyj+l8T4Horl8AlC2vJiPq1wpIwg2KBuS\n"
	"0TgmYoulAEjs1Ae1Sd3hKJBbZscu7JDSGAaPBNsb38x3ZwKuviUYnhWYdEsy1pGU\n"
	"QJWXnY8aB9Pef6G0FI5CrycQRPu5olmPV21Rf0ZqbsL85+OSi/GxYW7LVPTstvD6\n"
	"NN5yQswu270xAr4p34hQhxV3eZccI6dNpjCLS4iE5J85hSu+3yh/qcPhSjnxNPnu\n"
	"9hh6AC5tAgEDAoIBAQDMeBgrm4/xYGdrDvdngKRQhvdDYG/RzMuHAnWhQbbGYhRc\n"
	"GuL0nl/VVzKTjmOlFW+JTP62cPLMgV1WeYCEp61pmfrYi2NtyK/g0q4aHf1hdLuv\n"
	"3CpuoNQFFyZSrDXPKGW1HOgbbLAkGr0Mi3rEQbJuADCd4q/OMT6WGwrnmdofRtOD\n"
	"RmKepxfe+E5qVUG00MLDSqVt8jXgLBtJhWK6/wG/9tUWs3y+8FFPsCTkEwwuJ224\n"
	"pzULWmltEVw3e2dazzeS8AYAjCfpk6U9Jang3QVrVkpNmuWkmZNPf2zt4EHjMImr\n"
	"RApVUI0Os/qH5iohEQLFBI3Z4gPqiaY7NigapGBTAoGBAY6LR1AFvz73u4tIgZLI\n"
	"wp8LIuDxGxX9ipBR3mVx0it/1b3hgwFEBJBy7c5lfAavfFwrGZKWwlknAOtegx1T\n"
	"W0W2aCHZFBFBdMMxJHwSgo7wdd+r4ivEgN3ah/6rOZUx9l/yk9gFtgtRcCk/ynFQ\n"
	"JwpjSMKWl/aBfzrgOP6QQeVHAoGBAMUB5yKbSvhVr8uPZY1WwmHoizyCbeRlCdhU\n"
	"GhwNTOD6P9Za72VRp4PYOSFUrGLE6tjPQwsptU8f081LK6s2+diekUPxbqfM5LXt\n"
	"V+OOdLUdZG4QuDnueE1+v/Nnb58VZHjaLEkFnKmdZn4t4Xs9Hpn02iyD3z2P50W1\n"
	"693Bx7irAoGBAQmyL4quf39P0lzbAQyF1xSyF0CgvLlTsbWL6Zj2jBz/49PrrKuC\n"
	"rbWh897uUq8fqD1yEQxkgZDEq0eUV2jiPNkkRWvmDWDWTdd2GFK3AbSgTpUdQXKD\n"
	"AJPnBVRyJmN2pD/3DTqueVzg9XDVMaDgGgbs2yxkZU8A/3yVe1RgK+4vAoGBAINW\n"
	"mhcSMfrjyoe07l451uvwXNMBnphDW+WNZr1eM0Cm1TmR9O42b6060MDjHZct8eXf\n"
	"ggdxI4oVN94yHRzPUTsUYNf2ScUzQyPzj+0JoyNo7Z610Cae+t5Uf/eaSmoOQvs8\n"
	"HYYDvcZo7v7JQPzTabv4kXMClNO1RNkj8pPWhSXHAoGBAQ7ZUlJxoLNZ/liC6kxv\n"
	"rf0I11tsf5/LpsymFH+OuKx4cWFLCT917coaROhnYGe2ZhsbVipxgAYufUEYQ0aB\n"
	"AfJ8H+s6VIkV+G+tNpDAZ1FYS7HFy0sCpbuCqKenBi72RjO9/Q3RHzizg4qsc+Iw\n"
	"m3IfW2uOgKtUJkOa7Xsqx1mP\n"
	"-----END PRIVATE KEY-----\n";

static const char k2176_e65537[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIFBwIBADANBgkqhkiG9w0BAQEFAASCBPEwggTtAgEAAoIBEQDGCA+9U0opBHDv\n"
	"vWkWA3QU/tDeunIgsKFfnNT8AEeLane4a3t0Dgl1DLjRT8lZrkiM16thPIKboP6O\n"
	"Qq605u3waCA4B6MaeVM+e8tpmDiNyuKtqilbwc+wS/tuNPHyQRHIkzZajaApPM6F\n"
	"+RUW0dOsJHzvQ00hanyDtX+1z3RS1u3Z51UJWhCNieUa/EkFF9o6BcM3tYimT4MI\n"
	"x8aqEUSQJgZDjTDEKsiGpWLjgNLyZzpzawRULLpVWp8ei8Wz7WFcgIaond93OXDA\n"
	"gYqr/r9zb71C+IaLTDT5ZJWMl/uhvM/W6F5LwugByO1cbl7XuKjfKYSIJTX4BjhB\n"
	"FtTDOzog8kQ6sVNice0cmzGckZsp1wIDAQABAoIBEARsmq6/+nNXJOTI8QeWX9S2\n"
	"QAQHMKniowBSrdQhd3e5vbSnkL8DhJo9BLCxx82n806o5NchIHPfUWtBOcuohclY\n"
	"sjDo7sUWenx2DJHZM5jrXvbCoKDrABEFaY0emVyFr/gwsxwBIle5guMDBmxs7KiM\n"
	"ZM7S90QCBTJ2GW/Tk4WO8AptvNHJgCl3SxMe1wGwMybuKtRUSSnkTY2rdV0nNRm9\n"
	"of+jhnHhyyOiZbaurpZOP5iggnKt/9i2GPQ7U6fLAXZFFf9ql4BlaiMhvXyic4QK\n"
	"qX/8HNt7l1ZsuvpGJqsZy97slIcm/jKbmZWAcAFdkgWi1htcNL70pJD0RF8BbThx\n"
	"fJOezquKuVdEL4RPnbtpAoGJAOMlml4XOLGcyIyWo8uI4CS5oPTHAAf6JBclgG1v\n"
	"Y5NsoL4CpseS1F8R8IJ6pOik95YAWFzfcO7orlxOZIHQoyYnKczcz52zKPA4y/cj\n"
	"4K0QQwsFWTb7kzbb2KeXlOtJ9cbzhLQHQslyJn+0fAQTVLlEc1WLeUD3W3wnKTKp\n"
	"iPoajYP1FaFNap8CgYkA3y+t+cLa9nSc3bjU/nUBNjgsdnix1WBJXoGofEMZJ7e7\n"
	"jmDG5brq+iimUyZtiLR3VYlbRo1cqvfcHe/Z70/1sGhaYIeQGZGrL0HLb2O6Xdd1\n"
	"NXIvZK6YCzfLPIezZmc+t/RYs0nzBCCRSj9UfTNz7/12IRoXgycjwNOWE1ihxRDG\n"
	"mVQpJButyQKBiQCB/yxIexu8MpFoPHJDcvNssTwXuqge6J6tDI5ikyQ25C1ecWAH\n"
	"ydV3D2pJEm28o2T62Pm5NTuJz2qycz78OG6W0EUQ9LJxe26LhMXejA7ynOLxtL7p\n"
	"Q7Nt6wYkbBETU4Gwuf+RlLI5XfYAkkeDgZi0ayNiqu7bKnWWKUdfsj0tffLNuX8G\n"
	"kKrbAoGJAJ1UqCjT8rUf2WD3pbZG1vbYvIc7Z+lJ+g6UCiimyDnWbHHeyPczP+fe\n"
	"9fjRsw9WYHU84conZrbjCRlVdmUcEc8skOFRTwSnSmyCzh0UyVDTzL1DZCNubKIj\n"
	"z7I42v+KMo1Mw6aHr7cuGh2j7TRhLA52t2p4UTDUS4Dn5vh2V3tq6wU1bdcVZ/kC\n"
	"gYkA29HeysEO+u2Z1LINsSElSzr36xRfBqixEvxTwqD2LA92SP4z14cOHHFVgZwA\n"
	"Iv9SVQEs+jiSAcbGh1B+LE5nt5GhThWi7azIhKyYFZfJAl3wNz4kTyKjaL7e2oFg\n"
	"OZSbr01/bziLT8uLOA55TsWjQxJLDvsmHCg951eJveMQtg4ySYhWux4dfw==\n"
	"-----END PRIVATE KEY-----\n";

static const char k3000_e3[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIG0gIBADANBgkqhkiG9w0BAQEFAASCBrwwgga4AgEAAoIBeAC+tbpjgLxQEQEv\n"
	"XnCJ/YJB7xfQyKDuKkNV0ldjiJFxeMGGpoJ9TyYeik8D+un64e8BCvBkHDeVBg8g\n"
	"pO21x5VuzwCyeToCRGcQDkzTib2169eD+6LRmBQa9Ord5WPkL9IYR2EpHxHRDyDE\n"
	"+iatCTA0DsBU3Wm0S+cj5cDJ9ZGBZUtgt9nLzvflNSaZOipniFlJB+mGfF7PWZ9r\n"
	"sBo0BebRLiQj9sxkEAwLbfxoI+v6IR8fzracw3I/+Q8PuHqK10TQcrEUOHXus4mB\n"
	"9SiPuhKkrhYaJkLiMvWL4ip5IILBx88tBBT6tSG9m6gN1769dWroiDiNOKAwv3T9\n"
	"jTFSFtX170O3RLwvrPNJx3xRLL47k7ORHo/HQBpKldYdAr/clMVefIqW0Vsf/WGS\n"
	"bo81n0Jk7h+7pqEcojW3/0mK2ynkMX0pVVSNcfwTceVUK7ad/uKfis6iR45ujYQ2\n"
	"MKUlngh7ppVl3HX8fhcI580Jt14p8R7QyQYMjnkCAQMCggF3fyPRl6soNWCrdOmg\n"
	"W/5W1p9lNdsV9Bws4+GPl7Bg9lCBBG8BqN9uvwbfV/yb/JafVgdK7WglDgQKFcNJ\n"
	"I9pjnzSrIaYmrC2aCrQzN7EpI/KPrVJsi7q4Efick+5CmB/hZYTrcL9hNgoV2KbE\n"
	"c1t1eAnVjejxIt1EwpkrMU5hAO4yQHqRMon6mM4Zu3wcRQWQ21qbrv2Uiju/nSAR\n"
	"eAPvNh7CwqSIQrVdXPP9msKdUWtqFTR5vdehf/tfX73AN/zv6ZUiael+Pf2JZSRm\n"
	"99ObWIHfhx4cpmyS1COJeMkskUZyBSZvBkWqE+88tSofqCwX5BvZc6pHw8Td5JGh\n"
	"xijZtvtq9ZLiyYnisThcwxY2TQpWGj66LManqIf1lwS/7Ilsuv2Y0kG3nKn/jW6t\n"
	"2+WDFZp28BSvD9zKZ+J6FpV5KT03jFj1jqitwow0Kl0STN2KLbNp7Fr4yJX8Hbk1\n"
	"8mpBwkc8ON5nFhYa9M8uA68vtKqBNi2ii8uLAoG8D7ki0u/O1lOS6K3gn+s6QQok\n"
	"AwspQ1/KDg+DwthiPvD6ZtodkYeDF6R0eei+Z+mqmeBnO2uVZ0wybzPm98uwvMQS\n"
	"nbjGR6lsnH2mp3k2BRiGbpjBfotfNhN+gbBeidrK+APO93lA4NY6B4R6ZEzpQKcI\n"
	"bl25QllhF336wTtIdP7cNI7WKe8yw2TGFjUdoepRgh0dSmWfp8929g7a0Nh8u8q4\n"
	"okNPiRQoq2fDQYzUFjSTi4u/oIitKUQOKt0CgbwMIRQI7SM8qeJxirEXUC/9g/f5\n"
	"nnan5wVrCGTNQOtt60mL5cpMnKIyyfzSueFM41N+rtn323z3Ji1KAKQgXHX1+pY7\n"
	"1p0uedpL6lq2pgnt2KYc1AaFpwqKZQWUbm9ACu+DnCrPKQUfTyFnQzqaFVUH42NY\n"
	"oAtEE/JwHIoVytO2k4zGZVAruqQMf3FewlH9rMMd/g1oLbtV4EjJCmbbsYzfCYFc\n"
	"Yoiypufjc5gbYcWa03ClCttQ1FJbTiyyTQKBvAp7bIyf3zmNDJselb/yJtYGwqyy\n"
	"G4I/3AlfrSyQQX9LUZnmvmEFAg/C+FFF1EVGcbvq73zyY5oyzEoimfqHyyiCtxPQ\n"
	"hC/GSGhTxG+mJANlrvRl1lRc6iQM/wEgPwaR3KVX30+mK0CO0VpYUZgzRisaBZ7p\n"
	"Jiw7lg+pUdYnhaNUks20jsafdyzt2WQjaRacNla+E4buam/fpKQJ5zXlqH0x0Gws\n"
	"37C4Gxzv14EIjWQjDQeyf8BbHhuCtByTAoG8CBYNW0jCKHFBoQcgujV1U61P+775\n"
	"xUSuR1rt3itHnpzbspkxiGhsIdv94dFA3eziVHSRT+eopMQeMVXCwD2j+VG5fTm+\n"
	"Hvvm3UbnJG6xSTsZaI1Zrm9cXENZDZ701VyfrRLHNMYDajTA74InEWOOBUJCOxVc\n"
	"2A1MSr2xY9yNJGJd2ZjgHScYCFT2Pyw2qR3XaVQI8B584+rbMLGZ58uzP1urkuxb\n"
	"IcSal6JlZ5aDvIz1w1ySNeLhkjQdzDMCgbwETn+8Ac9/zlgkEpZM9G1zP8MuvXrw\n"
	"/Q1QhpIifEt1lTHBDOyZ3eymhUKIU6Df31Hx4lmgNHYREnWpaXWMvV2noWyV4vHD\n"
	"kiThsWuis9UGHS+xqrarla9Dupi/wuS53W6Qg4s5n4jnes8enGDvcA3hYwdAdflC\n"
	"9QsnVRkRuMM7CVWqdSzcYUaRT3e+8AyY5GiQwUi+1x9PQ3zm8uFCYAouGdCoD6ej\n"
	"Oa/HmXektn9ug8/l+P+mkuRD8lw0aA==\n"
	"-----END PRIVATE KEY-----\n";

static const char k4096_e65537[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIJQgIBADANBgkqhkiG9w0BAQEFAASCCSwwggkoAgEAAoICAQCzHXaF4A5N7ODd\n"
	"tqQ1PFXKWZsqM0wa/4noswhAIwYu/vFiE2Xfk7vUO5kiTrXJ6tDuOwDzxDwtdmBb\n"
	"j+JscfrzwhKtsjGZr9gFxwGsfCOqE1JDdSJzHSLzfakzDA2PX7YXFxgv++iZV/lj\n"
	"WKvlitHeiqd9tF2oLael0Cj3jl/8nzW/Xon6esxHaH/LgK5XhgHWFehJneC/XLVV\n"
	"/n7JILySxdk9YL2uXYzYhA6M5g/Hef2xc/zrBIb2vOTv33Ht22OpVqP24bXrtXPZ\n"
	"Z7jYCeN005R3U3Q3XSw8obscM6FZLyoN1CUNCtcHpoCmVx+pQq+6T9ZJ1jpNQFTY\n"
	"uwRrGB1TeVxJ2xeK5S89Qz+eqg1c+4jRoxLEQdVtpSjt25oBq9mGOF2BvNkXcwzU\n"
	"5bKQoSP+CqtrLS3w4u+EdGCDA70gBx8+H8n25Sg0xhDBYJfGnWa9YDaGq1XujH8j\n"
	"WkPcW6cBJG4gA792mziOlSHvwEewZDQjNPhD+828UBQzhFuhGUhhVArtHwRygqXY\n"
	"IubcMS/AoZCrcJpuYcxVPtq6NrdIy7l9dXQ98BpiuJQAHl+G/1IW3s35waanI8N4\n"
	"2ncNDYr26S0+Lef0RgxI/7AbFcJq/9pZ2+4kcZ7h9QtyO8Dz7yR0lC1MzzRHReFG\n"
	"VmRMSvgsvoEQXRHcF/W6497o/u8o2wIDAQABAoICAB2Qx59/OvfmRGiZ5865HV4l\n"
	"NAV0vzjA+pYpyzsEV6vKkwnsiByDdHXVZUhySUlBqegmXtizXng7Ty99932NbkOY\n"
	"mDW0sWxGyDfilWZP0svq8YwcrymPjdU3EQanPtZuPDk2gNxsJAT/2QoVjmukN6fu\n"
	"J4nf4Qp23XKeLXejjY4+XNmwX200TOOdSQ73ODqj7kn/hr7Ja9pFPCeBi+hjhM0O\n"
	"EcxdsMxcjnhaNVP7pm93tbEkzgL11divmHNMj6/tTqzv62kVRnlYaSg3RJ3gj/uY\n"
	"8ID737Xt0B9YAPHoRyyt/4PrLeHSar54CkoAHUP2s9ljU/dkgG4qUsxi88Pru0Hk\n"
	"2L5PUY5/rqn53j+wgNZVZd5Joz+2/jlxnSILx2aU25N5NC1zU6/CjD3RoJ0ad2MT\n"
	"t+3jeUouIxssl9GwyGYHmgfuq85TO+yXkVe3NzhAApz9ro5F0u/jVSRXNscv1aun\n"
	"MHRqQ/o3BUvO0jixolnkIartjUeJmmpvtFuMiAXoduFfnp1JN/APpExp7/EQv7mK\n"
	"VNhFxabX5+OSbZgaWi8SLm1bx41UhwW5b2gOedVUpS25+WGbQjRjsJPEf64L716l\n"
	"8PhKWNc5qpmAnanbndVOr6GSSiQqvp3QJRmhjEIi0fvWg/3kL31guzldZ3MnC3e7\n"
	"4A2PlJOrmeOoHDu9s6v1AoIBAQDukzFBIEY++rAFYiVf4iOdH41HxMNo8kioyQOa\n"
	"PSwzFE7htWlnO5IvHytLgznpkxO0ostTJFqUjfemvmXvFQmVznbg696ncynI4/q/\n"
	"xiVSV+frabLOHod54K8N9zqQPwjF6E01RDjXH5HxfcmuzMB9FwCf1S9iiLgd1t9g\n"
	"+5Co1Te+Q4p717xyR0fGByDxS85yAo69sg27gS2KITyfAlvPpL3/rpxUbjnF86IE\n"
	"tONh0G0xjujvFKX6CoEIaO/+MERqG3mduWxx1B96N65qLZySWKjfKYjEFWeuZbjy\n"
	"a27WeFZJ0RRkkF6T4uzKsU/WZoFDviX9xeNSi21jyNJWkL59AoIBAQDAMoGouVSP\n"
	"3rJX1Ozw0IR6jDALXFwBahXrU5D0ej6SdGC6rPBPPwygGyMilN/O7FzDja4htJuV\n"
	"yklGhS1H2VWRaki1wMU2dr/56ig+T/v0b9LBZL1jt53TiES/VI3avH4d/JwKmZl5\n"
	"cHumAMaQsTsnHAV9VlwOjHR8atJlQoMxerYbCuQRMK4jazYasPxgxP1jvwlIgGNz\n"
	"1chzx+zfcnkrU9hAciTRlYHHI7vr5NXD2tSIoXQUnGbSIfUJw0363NnJvomslony\n"
	"YVGhut0SEnutETsfpgjRYdmQM/kkV0pX15wzu6VwcuTiTW9IVpcYjt/wmbqPBGVn\n"
	"QpppDyuNF+w3AoIBAQDP1SJfXcJUMwcMaYetk876nfXxw5OH5SkvAI5G22uZw+ND\n"
	"9UmxSM/8hOaujc7xj9Lm1brS3ySZrWNEuzEJqgYDny0om9IHheesvg4+6lqw9Stw\n"
	"hU/jB+11Wyqku+8kogT+g3RfJuNtZG87NR1xTaWSU2uT0Z/J8tiSBhHq5rwKmFRL\n"
	"R4Noh3P/CeGYvbUQ/70EzP2Ue3xDEDGf13x7+Q4KQbXS+0Xst2lU7P0DpKFBINU/\n"
	"CwQY4qAExwnJTcFkap/u36h+on26W9RgIAmtLbbsNphGcGRYjV0ZLDyF0tlntMVW\n"
	"4PEm+i2qH1Gw8e5fFEUfwpJOFQoHarcM6nFyP/3xAoIBADM1AbCneC1Awzl9hIeA\n"
	"tttDwIU2XVkPH7nsMOHCNCunECKMcxZaEQ4TTOAo1Bx4gxqjA/L9ALr/A1jjoLXU\n"
	"5ORycd7i9mhVaT63sXMwsktlA7z9DyyjPkyesNpdN9JAiEWLCTQVyns9ieQnrr/c\n"
	"SItZ/uhu+uXxbBO+DkJmXzfunthDpZIi6zKKnQatgwBxW6WYv2tusZCqM9cNPEIo\n"
	"aLovg51gDAk/ES2yip4GASJGinvAsIHRTd/MplGslHkzIF+NAXdXQHewkCRL+hyX\n"
	"ihYJUjxTa2QF8wZlooqZKziOPJLX+vMj2XGl+fFHCMjFQEsFWlxCapYBe8xj+1GD\n"
	"Py8CggEAVjdIBYVfU7nEqNzXmI8hrmedlpXpd2XfMUnjsXGVUt0od0CWQ2zEBWPi\n"
	"J/M38p83dB3pgimghg9g2s1rPuIxd2UtR17L5HvtXsr51h1XY4kSaf+EFH6Xp1rg\n"
	"e4zr3qBxLg5ENep2oV9uigRdfkuYR4TbYEbia/t4N816UrgDENx/X53i9DaSvO2l\n"
	"u3s0rL6pHjcSa7Sj+uEtXCIAQ2X7FidzCXaQ4WBPO4FRCzfUIFkqRHFIWFRTGnqI\n"
	"bfb7qA6qEHDnrx5DcMmAulDDABiGZ6PKri8WgTu6F67/Ku8RBkf2c9WqlGYlZriH\n"
	"vbyaEcDcf22sfBJiX1gM3Jxv5I8V2A==\n"
	"-----END PRIVATE KEY-----\n";

static const char k2048_e61[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIEwgIBADANBgkqhkiG9w0BAQEFAASCBKwwggSoAgEAAoIBAQCYdK+qdiB/g6RF\n"
	"nbExs+Wo8pi/yaLVUi5q/Cn1SlAwftEkzmCwTsjORs+pBye9sM43ZVQPlhVeNxus\n"
	"4tffLkHZncb44gZnBjejopp6CD5nwhOmYvRaceH6nbno+TKC5w8C7+a8eUpGU2kT\n"
	"madKYy3Qc6E3kNKekBgm0abUJFlFnhYXRD0fF5LHOUAJKF8WO5L+vfazEoLgG1aZ\n"
	"u5+oGK1/nFbm2zsIfBUI3cUvLPqNL6gQGf1fiI1++VYFJBhsFCVA13RfsH5VOV7C\n"
	"DaR+pme5No67AeKpTMz/7tjLftcYolLbPLLHzWGySB2PNE4JKgoRJod6ga+VrAu3\n"
	"qciBfPoPAggf/////////wKCAQAprsnlOoyuzjTaipqBVdSMmsYJ3TLiqJM84xns\n"
	"U/36rnLYc9h/UcOmWDXA2FbmEwT6PWB/qBR1OWMvCaPVcuDAqUODr41Ne7BAT24S\n"
	"UoKq1sx2nkLweX3NNhnYm77SVy45EasI8hCjOJ0PRuCTUrwYPHIsN2gJWgN2SFAt\n"
	"FCNmap/VddPOw7DXgNScb1ID9eZll8FIlsMt8y0hVYFH4tFWylgx1OvLrWkwW7M7\n"
	"rslN/AYQrSA6P/P20dwTuMuR8exP7B7neVmpkUo9eKgwfPts082yXItQbsFF51aV\n"
	"MWMRl9sQGNuHF6l6KKfvr4p6s4S6YWf4xourGgskrPAduHwvAoGBANMPSWYYPF6K\n"
	"oBVoFWZorJ2AaQ9wsuRUvhbY2skD6y89WyVtP14yIW/2SPkygj72jBaU1CxjQ7/Q\n"
	"tvQZA5m8S/2+OJkHU1+FERxap22PI/pHjSL++y2744mfz/AtbVnHQQ7mK/NCe15y\n"
	"bzwL91aKkvXT7iFMZvSHC+ydXzVWxeNdAoGBALjq8UvtgMvYSQysk9HrqCEjR4+p\n"
	"WfiKJAI9Mnlj3uJvkHVfutXBfReUKUWfp+k5Ntzhg00Ndc6iJAPCgc4Mfw9Ox1yf\n"
	"V2RxHE5sAYu8g7wqKx6WAlPVCUvFmQust2KbDA6lzQvjrRFWh0mdFuUtroEDSFF8\n"
	"G6ouDmoLEHc9z0hbAoGBAKK41sqii8pjS4K56x5fy7yhVux9/9j8JnLDCBIIvi4T\n"
	"01dcyBXY777EipFBrHO0GzaU5PFzDDLGfgeSL2L9UP9v+mbUe2dNebId2lPCdRtZ\n"
	"lUeeldPFStlYu23P0T0tzHcc5hw79rIUcLkGwANv9pvXHWuFeQueCW/Sz8xBq3/n\n"
	"AoGAOYK1s5271b5lNqV1Z3eVF1KoT/yUF5LNOMWNY/CDi/XCGMusw8RlSLWqplTb\n"
	"BMR7Seww8KojQx98Z6ZFlr/L8At9GA0aYAAGPiJwFM+Q9cYHVCt9UUejkIZwEnpy\n"
	"lqpB7k4E+t08Jv/XJbGPMNaY8qL2h1/0HZQE4Pm1mpYMcR0CgYBQqXG6nE4VFmGE\n"
	"0akN/5Vne8WC0a/0z6rLpoN8/IMmsSWCLUdeCG5I+AfkuKPeVYxB479GfHx++ZYa\n"
	"8XrUYgSl2iJnihj49pyVXe/lJtzVuw9ViLif94LpdPy6ifm3ClO8IXRbUElUmjmN\n"
	"Vf1jYcQkmrbK9alH24WYzw7z48TaYg==\n"
	"-----END PRIVATE KEY-----\n";

static const char *const key_pem[] = {
	k512_e3, k1032_e65537, k2048_e65537, k2049_e3,
	k2176_e65537, k3000_e3, k4096_e65537, k2048_e61,
};
#define NKEYS (sizeof(key_pem) / sizeof(key_pem[0]))

static struct key {
	mbedtls_pk_context pk;          /* private: signs raw blocks */
	struct bm_jwt_keyring *ring;    /* its public half; NULL below 2048 bits */
	unsigned char n[K_MAX];
	size_t k;
	uint64_t e;
} keys[NKEYS];

static int have_asm;   /* 1: two row implementations to compare */

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "fuzz_rsa: %s:%d: %s\n", __FILE__,  \
				__LINE__, #cond);                            \
			abort();                                             \
		}                                                            \
	} while (0)

static void keys_init(void)
{
	static int done;

	if (done)
		return;
	done = 1;
	have_asm = bm_jwt_rsa_portable(0);
	for (size_t i = 0; i < NKEYS; i++) {
		struct key *K = &keys[i];
		const char *pem = key_pem[i];
		mbedtls_rsa_context *rsa;
		unsigned char eb[8];
		struct bm_jwt_key *bk;

		mbedtls_pk_init(&K->pk);
		CHECK(!mbedtls_pk_parse_key(&K->pk, (const unsigned char *)pem,
					    strlen(pem) + 1, NULL, 0));
		rsa = mbedtls_pk_rsa(K->pk);
		K->k = mbedtls_rsa_get_len(rsa);
		CHECK(!mbedtls_mpi_write_binary(&rsa->N, K->n, K->k));
		CHECK(!mbedtls_mpi_write_binary(&rsa->E, eb, 8));
		for (int j = 0; j < 8; j++)
			K->e = K->e << 8 | eb[j];
		if (mbedtls_pk_get_bitlen(&K->pk) < 2048)
			continue;
		CHECK(!bm_jwt_key_parse(pem, strlen(pem), &bk));
		CHECK(!bm_jwt_keyring_new(&K->ring));
		CHECK(!bm_jwt_keyring_add(K->ring, bk));
	}
}

/* Input bytes, then the fill once they run out. */
struct rd {
	const uint8_t *p;
	size_t n, off;
	unsigned fill;
	uint64_t x;
};

static uint8_t rd_byte(struct rd *r)
{
	if (r->off < r->n)
		return r->p[r->off++];
	switch (r->fill & 3) {
	case 0: return 0;
	case 1: return 0xff;
	case 2: return r->n ? r->p[r->off++ % r->n] : 0x5a;
	}
	r->x ^= r->x << 13;
	r->x ^= r->x >> 7;
	r->x ^= r->x << 17;
	return (uint8_t)r->x;
}

static void public_check(const unsigned char *n, size_t k, uint64_t e,
			 const unsigned char *s, mbedtls_rsa_context *rsa)
{
	unsigned char want[K_MAX], got[K_MAX];
	int ge = memcmp(s, n, k) >= 0;
	int rm = mbedtls_rsa_public(rsa, s, want);

	CHECK(!rm == !ge);
	for (int impl = 0; impl <= have_asm; impl++) {
		int rb;

		bm_jwt_rsa_portable(impl);
		rb = bm_jwt_rsa_public(n, k, e, s, got);
		CHECK(rb == (ge ? BM_ERANGE : 0));
		CHECK(rb || !memcmp(got, want, k));
	}
	bm_jwt_rsa_portable(0);
}

static void fuzz_raw(struct rd *r)
{
	unsigned char n[K_MAX], s[K_MAX], eb[8], out[K_MAX];
	mbedtls_rsa_context rsa;
	unsigned b1 = rd_byte(r), b2 = rd_byte(r), b3 = rd_byte(r);
	size_t k = 1 + ((b1 << 8 | b2) % K_MAX);
	uint64_t e = 0;
	int declined, c;

	r->fill = rd_byte(r);
	r->x = 0x9e3779b97f4a7c15ull ^ r->fill;
	switch (b3 & 3) {
	case 0: e = 3; break;
	case 1: e = 65537; break;
	default:
		for (int i = 0; i < 8; i++)
			e = e << 8 | rd_byte(r);
		if ((b3 & 3) == 3)
			e |= 1;
	}
	for (size_t i = 0; i < k; i++)
		n[i] = rd_byte(r);
	if (!(b3 & 0x80)) {
		n[k - 1] |= 1;
		if (!n[0])
			n[0] = 0x80;
	}
	for (size_t i = 0; i < k; i++)
		s[i] = rd_byte(r);
	switch (b3 >> 4 & 3) {
	case 1:   /* N - 1 - u */
	case 2:   /* N + u, wrapping at k bytes */
		c = (b3 >> 4 & 3) == 1 ? -1 - s[k - 1] : s[k - 1];
		for (size_t i = k; i-- > 0;) {
			c += n[i];
			s[i] = (unsigned char)c;
			c = c < 0 ? -((255 - c) / 256) : c / 256;
		}
		break;
	case 3:
		memcpy(s, n, k / 2);
		break;
	}

	declined = !n[0] || !(n[k - 1] & 1) || e < 3 || !(e & 1);
	for (int impl = 0; impl <= have_asm; impl++) {
		bm_jwt_rsa_portable(impl);
		CHECK((bm_jwt_rsa_public(n, k, e, s, out) == BM_EINVAL) == declined);
	}
	bm_jwt_rsa_portable(0);
	if (declined)
		return;
	for (int i = 0; i < 8; i++)
		eb[i] = (unsigned char)(e >> (56 - 8 * i));
	mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
	CHECK(!mbedtls_rsa_import_raw(&rsa, n, k, NULL, 0, NULL, 0, NULL, 0, eb, 8));
	CHECK(!mbedtls_rsa_complete(&rsa));
	public_check(n, k, e, s, &rsa);
	mbedtls_rsa_free(&rsa);
}

/* The signing input "HEADER.PAYLOAD" of a token carrying up to 16 input
 * bytes in its jti, and its hash. */
static void token_start(struct rd *r, struct bm_buf *tok, unsigned char hash[32])
{
	static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	static const char hex[] = "0123456789abcdef";
	char pay[160], jti[33];
	size_t m = rd_byte(r) % 17;

	for (size_t i = 0; i < m; i++) {
		uint8_t b = rd_byte(r);
		jti[2 * i] = hex[b >> 4];
		jti[2 * i + 1] = hex[b & 15];
	}
	jti[2 * m] = 0;
	snprintf(pay, sizeof(pay), "{\"sub\":\"fuzz\",\"device\":\"d\",\"jti\":\"j%s\","
		 "\"iat\":%d,\"exp\":%d}", jti, NOW, NOW + 3600);
	bm_buf_init(tok, 0);
	CHECK(!bm_b64url_encode_buf(tok, hdr, strlen(hdr)));
	CHECK(!bm_buf_add(tok, ".", 1));
	CHECK(!bm_b64url_encode_buf(tok, pay, strlen(pay)));
	CHECK(!mbedtls_sha256_ret(tok->data, tok->len, hash, 0));
}

/* Everything that verifies sig for hash must agree; want: -1 unknown,
 * else whether it must verify. */
static void verify_check(struct key *K, struct bm_buf *tok, const unsigned char hash[32],
			 const unsigned char *sig, int want)
{
	mbedtls_rsa_context *rsa = mbedtls_pk_rsa(K->pk);
	size_t start = tok->len;
	int ok = !mbedtls_rsa_rsassa_pkcs1_v15_verify(rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC,
						      MBEDTLS_MD_SHA256, 32, hash, sig);

	CHECK(want < 0 || ok == want);
	public_check(K->n, K->k, K->e, sig, rsa);
	CHECK(!bm_buf_add(tok, ".", 1));
	CHECK(!bm_b64url_encode_buf(tok, sig, K->k));
	for (int impl = 0; impl <= have_asm; impl++) {
		int rb;

		bm_jwt_rsa_portable(impl);
		rb = bm_jwt_rsa_verify(K->n, K->k, K->e, hash, sig);
		CHECK(rb == (ok ? 0 : BM_ETOKEN_SIG));
		if (K->ring) {
			rb = bm_jwt_verify(K->ring, (const char *)tok->data, tok->len, NOW,
					   0, NULL);
			CHECK(rb == (ok ? 0 : BM_ETOKEN_SIG));
		}
	}
	bm_jwt_rsa_portable(0);
	tok->len = start;
}

static void fuzz_key(struct rd *r, int mode, struct key *K)
{
	mbedtls_rsa_context *rsa = mbedtls_pk_rsa(K->pk);
	unsigned char hash[32], em[K_MAX], orig[K_MAX], sig[K_MAX];
	size_t k = K->k;
	struct bm_buf tok;

	token_start(r, &tok, hash);
	rt_em_encode(orig, k, hash);
	memcpy(em, orig, k);
	if (mode == 2) {
		int edits = rd_byte(r) % 8;

		while (edits-- > 0) {
			unsigned kind = rd_byte(r);
			size_t pos = (size_t)(rd_byte(r) << 8 | rd_byte(r)) % k;
			unsigned char v = rd_byte(r);
			size_t d = 1 + v % 64;

			switch (kind % 4) {
			case 0: em[pos] = v; break;
			case 1: em[pos] ^= v; break;
			case 2:   /* 00 DigestInfo hash moved left, garbage after */
				if (d > k - 54)   /* it would reach 00 01 */
					break;
				memmove(em + k - 52 - d, em + k - 52, 52);
				for (size_t i = k - d; i < k; i++)
					em[i] = rd_byte(r);
				break;
			case 3:   /* v inserted at pos, the last byte dropped */
				memmove(em + pos + 1, em + pos, k - pos - 1);
				em[pos] = v;
				break;
			}
		}
		if (memcmp(em, K->n, k) < 0) {
			CHECK(!mbedtls_rsa_private(rsa, NULL, NULL, em, sig));
			verify_check(K, &tok, hash, sig, !memcmp(em, orig, k));
		} else {
			verify_check(K, &tok, hash, em, -1);   /* >= N */
		}
	} else {
		int flip = rd_byte(r) & 1;

		CHECK(!mbedtls_rsa_private(rsa, NULL, NULL, orig, sig));
		for (size_t i = 0; i < k; i++)
			sig[i] = flip ? sig[i] ^ rd_byte(r) : rd_byte(r);
		verify_check(K, &tok, hash, sig, -1);
	}
	bm_buf_release(&tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rd r = { data, size, 0, 0, 0 };
	unsigned op;

	if (size < 1)
		return 0;
	keys_init();
	if (have_asm < 0)
		return 0;   /* no arithmetic of its own in this build */
	op = rd_byte(&r);
	if ((op & 3) < 2)
		fuzz_raw(&r);
	else
		fuzz_key(&r, (int)(op & 3), &keys[(op >> 2) % NKEYS]);
	return 0;
}
