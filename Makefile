# BIMIP: one non-recursive GNU Makefile.
#
#   make            build every library, daemon, tool and test (release variant)
#   make run        install missing packages, build, start one node on loopback
#   make test       install missing packages, build with DEVELOPER=1, run all tests
#   make asan       the same tests under AddressSanitizer + UBSan
#   make fuzz       run every libFuzzer target for FUZZ_SECONDS each (clang)
#   make bench      benchmarks; prints figures and ratios to raw/peer baselines
#   make soak       chat load on a cluster while nodes are killed; exactly-once check
#   make install    PREFIX=/usr/local DESTDIR=
#
# Sources are found by directory, so adding a file needs no edit here:
#   common/*.c queue/*.c cluster/*.c client/lib/*.c   -> static libraries
#   signal/*.c server/*.c client/{cli,bench,ctl}/*.c  -> build/bin/<daemon>
#   tests/unit/test_*.c, tests/integration/it_*.c     -> one test binary each
#   tests/support/*.c                                 -> helpers linked into tests
#   tests/fuzz/fuzz_*.c                               -> libFuzzer targets + replay

VARIANT ?= release
# B may be overridden (make B=build/mine ...) to build in a private tree.
ifeq ($(origin B),undefined)
B       := build/$(VARIANT)
ifeq ($(VARIANT),release)
BIN     := build/bin
endif
endif
BIN     ?= $(B)/bin
GEN     := build/gen

CC      ?= cc
ifeq ($(VARIANT),fuzz)
CC      := clang
endif

PKGS        := libevent libevent_pthreads libzmq jansson
PKG_CFLAGS  := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
SYS_LIBS    := $(PKG_LIBS) -lmbedtls -lmbedx509 -lmbedcrypto \
               -l:libprotobuf-nanopb.a -lpthread -lm

CFLAGS_release := -O2 -g
CFLAGS_debug   := -O0 -g
CFLAGS_asan    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
                  -fno-sanitize-recover=undefined
LDFLAGS_asan   := -fsanitize=address,undefined
CFLAGS_fuzz    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link
LDFLAGS_fuzz   := -fsanitize=address,undefined

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wformat=2 -Wno-unused-parameter -Wno-missing-field-initializers
# DEVELOPER=1 (make test) adds checks, not code: see $(B)/.flags below.
DEVWARN := -Werror -Wvla -Wdeclaration-after-statement -Wno-error=deprecated-declarations
ifeq ($(DEVELOPER),1)
WARN    += $(DEVWARN)
endif

CPPFLAGS += -I. -I$(GEN) -Icommon -Iqueue -Icluster -Iclient/lib -Itests/support -D_GNU_SOURCE
CFLAGS   += -std=c11 -pipe $(CFLAGS_$(VARIANT)) $(WARN) $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += $(LDFLAGS_$(VARIANT))

PREFIX  ?= /usr/local
DESTDIR ?=

# --- sources -----------------------------------------------------------------
PROTO_SRC  := $(GEN)/bimip.pb.c
COMMON_SRC := $(wildcard common/*.c)
QUEUE_SRC  := $(wildcard queue/*.c)
CLUSTER_SRC:= $(wildcard cluster/*.c)
CLIENT_SRC := $(wildcard client/lib/*.c)
SUPPORT_SRC:= $(wildcard tests/support/*.c)

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIB_PROTO   := $(B)/libbm_proto.a
LIB_COMMON  := $(B)/libbm_common.a
LIB_QUEUE   := $(B)/libbm_queue.a
LIB_CLUSTER := $(B)/libbm_cluster.a
LIB_CLIENT  := $(B)/libbimip_client.a
LIB_SUPPORT := $(B)/libbm_testsupport.a
# Link order: dependents first.
LIBS := $(LIB_CLIENT) $(LIB_CLUSTER) $(LIB_QUEUE) $(LIB_COMMON) $(LIB_PROTO)

DAEMONS := bimip-signal:signal bimip-server:server bimipctl:client/ctl \
           bimip-cli:client/cli bimip-bench:client/bench
define daemon_rule
$(BIN)/$(1): $(call obj,$(wildcard $(2)/*.c)) $(LIBS) | $(BIN)
	$$(CC) $$(LDFLAGS) -o $$@ $(call obj,$(wildcard $(2)/*.c)) $(LIBS) $$(SYS_LIBS)
ALL_OBJ += $(call obj,$(wildcard $(2)/*.c))
PROGRAMS += $(BIN)/$(1)
endef
$(foreach d,$(DAEMONS),$(eval $(call daemon_rule,$(word 1,$(subst :, ,$(d))),$(word 2,$(subst :, ,$(d))))))

UNIT_SRC := $(wildcard tests/unit/test_*.c)
IT_SRC   := $(wildcard tests/integration/it_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))
IT_BIN   := $(patsubst tests/integration/%.c,$(B)/tests/%,$(IT_SRC))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_REPLAY := $(patsubst tests/fuzz/%.c,$(B)/tests/replay_%,$(FUZZ_SRC))

# The soak (tests/soak/): one engine, two mains -- bimip-soak for make soak,
# it_soak (short) among the integration tests.
SOAK_SRC := $(wildcard tests/soak/*.c)
SOAK_LIB := $(call obj,tests/soak/soak.c)
SOAK_BIN := $(B)/soak/bimip-soak
IT_BIN   += $(B)/tests/it_soak

ALL_OBJ += $(call obj,$(SOAK_SRC))
ALL_OBJ += $(call obj,$(COMMON_SRC) $(QUEUE_SRC) $(CLUSTER_SRC) $(CLIENT_SRC) \
             $(SUPPORT_SRC) $(UNIT_SRC) $(IT_SRC) $(FUZZ_SRC) tests/fuzz/replay_main.c) \
           $(B)/obj/gen/bimip.pb.o

.PHONY: all tests test check asan fuzz fuzzers bench run install clean deps FORCE \
        soak crash-long
.DEFAULT_GOAL := all

all: $(PROGRAMS) tests

tests: $(UNIT_BIN) $(IT_BIN) $(FUZZ_REPLAY) $(SOAK_BIN)

# --- protocol ----------------------------------------------------------------
NANOPB_GEN ?= /usr/bin/python3 /usr/bin/nanopb_generator.py
NANOPB_PY  := $(lastword $(NANOPB_GEN))
$(GEN)/bimip.pb.c $(GEN)/bimip.pb.h &: proto/bimip.proto proto/bimip.options | $(GEN)
	@test -f $(NANOPB_PY) || command -v $(NANOPB_PY) >/dev/null || { \
	    echo "make: nanopb's generator $(NANOPB_PY) is missing: run 'make deps' as root" \
	         "(it installs the Debian packages), or 'make run' / 'make test', which do that first" >&2; \
	    exit 1; }
	$(NANOPB_GEN) -q -I proto -f proto/bimip.options -D $(GEN) proto/bimip.proto

$(B)/obj/gen/bimip.pb.o: $(GEN)/bimip.pb.c $(B)/.flags
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -Wno-error -c -o $@ $<

# Every object may include the generated header.
$(filter-out $(B)/obj/gen/%,$(ALL_OBJ)): | $(GEN)/bimip.pb.h

# Objects depend on the flags they were built with (git's GIT-CFLAGS).  The
# DEVELOPER=1 checks change no code, so objects built with them serve a
# plain build as they are (`make test` then `make run` rebuilds nothing),
# while a DEVELOPER=1 build after a plain one rebuilds everything, to check.
FLAGS_ID := $(CC) $(CPPFLAGS) $(filter-out $(DEVWARN),$(CFLAGS)) $(LDFLAGS)
$(B)/.flags: FORCE
	@mkdir -p $(B)
	@if [ "$$(sed -n 1p $@ 2>/dev/null)" = '$(FLAGS_ID)' ] && \
	    { [ '$(DEVELOPER)' != 1 ] || [ "$$(sed -n 2p $@)" = checked ]; }; then :; \
	else printf '%s\n%s\n' '$(FLAGS_ID)' '$(if $(filter 1,$(DEVELOPER)),checked,plain)' > $@; fi
FORCE:

$(B)/obj/%.o: %.c $(B)/.flags
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# --- libraries ---------------------------------------------------------------
$(LIB_PROTO): $(B)/obj/gen/bimip.pb.o
$(LIB_COMMON): $(call obj,$(COMMON_SRC))
$(LIB_QUEUE): $(call obj,$(QUEUE_SRC))
$(LIB_CLUSTER): $(call obj,$(CLUSTER_SRC))
$(LIB_CLIENT): $(call obj,$(CLIENT_SRC))
$(LIB_SUPPORT): $(call obj,$(SUPPORT_SRC))
$(B)/lib%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^ $(if $^,,$(B)/.empty.o)

$(B)/.empty.o:
	@mkdir -p $(dir $@)
	echo '' | $(CC) -x c -c -o $@ -

$(B)/libbm_cluster.a $(B)/libbm_queue.a $(B)/libbimip_client.a $(B)/libbm_testsupport.a: | $(B)/.empty.o

# --- tests -------------------------------------------------------------------
TEST_LIBS := $(LIB_SUPPORT) $(LIBS)
$(B)/tests/%: $(B)/obj/tests/unit/%.o $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_LIBS) $(SYS_LIBS) -lcmocka

$(B)/tests/it_%: $(B)/obj/tests/integration/it_%.o $(TEST_LIBS) | $(PROGRAMS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_LIBS) $(SYS_LIBS) -lcmocka

$(B)/tests/it_soak: $(call obj,tests/soak/it_soak.c) $(SOAK_LIB) $(TEST_LIBS) | $(PROGRAMS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(call obj,tests/soak/it_soak.c) $(SOAK_LIB) $(TEST_LIBS) $(SYS_LIBS)

$(SOAK_BIN): $(call obj,tests/soak/main.c) $(SOAK_LIB) $(TEST_LIBS) | $(PROGRAMS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(call obj,tests/soak/main.c) $(SOAK_LIB) $(TEST_LIBS) $(SYS_LIBS)

# Corpus replay: the fuzz target linked with a plain main() that feeds it files.
$(B)/tests/replay_%: $(B)/obj/tests/fuzz/%.o $(B)/obj/tests/fuzz/replay_main.o $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(SYS_LIBS)

# libFuzzer binaries (VARIANT=fuzz only: clang, every library built with
# -fsanitize=fuzzer-no-link so coverage reaches into it).
$(B)/fuzzers/%: $(B)/obj/tests/fuzz/%.o $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) -fsanitize=address,undefined,fuzzer -o $@ $< $(TEST_LIBS) $(SYS_LIBS)
fuzzers: $(patsubst tests/fuzz/%.c,$(B)/fuzzers/%,$(FUZZ_SRC))

check: tests
	BIMIP_BIN=$(abspath $(BIN)) tests/run.sh $(B)/tests

# The two commands a new user types.
deps:
	@sh deploy/deps.sh

# A short libFuzzer run of every target is part of make test (the corpus
# replay runs with the other tests); make fuzz runs them for longer.
FUZZ_SMOKE_SECONDS ?= 2
test:
	@sh deploy/deps.sh
	@$(MAKE) --no-print-directory DEVELOPER=1 all
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS)
	@$(MAKE) --no-print-directory DEVELOPER=1 check

asan:
	@sh deploy/deps.sh
	@$(MAKE) --no-print-directory VARIANT=asan DEVELOPER=1 all check

run:
	@sh deploy/deps.sh
	@$(MAKE) --no-print-directory all
	@deploy/run-single.sh $(BIN)

FUZZ_SECONDS ?= 60
fuzz:
	@sh deploy/deps.sh
	@$(MAKE) --no-print-directory VARIANT=fuzz fuzzers
	@tests/fuzz/run-fuzz.sh $(FUZZ_SECONDS) build/fuzz/fuzzers

bench:
	@sh deploy/deps.sh --bench
	@$(MAKE) --no-print-directory all
	@tests/bench/run-bench.sh $(BIN)

# Long crash campaigns: the queue killed while writing, and the server killed
# during chat traffic (each kill/restart round checked for loss, duplicates
# and version gaps).
crash-long:
	@$(MAKE) --no-print-directory DEVELOPER=1 all
	BIMIP_CRASH_TRIALS=$${BIMIP_CRASH_TRIALS:-500} BIMIP_TEST_TIMEOUT=$${BIMIP_TEST_TIMEOUT:-7200} \
	    BIMIP_BIN=$(abspath $(BIN)) tests/run.sh $(B)/tests crash

# Chat load on servers + 2 signals for SOAK_SECONDS while nodes are killed
# at random; then every acknowledged message must have reached every device
# of its receiver exactly once (tests/soak/soak.c; SOAK_* variables there).
soak:
	@sh deploy/deps.sh
	@$(MAKE) --no-print-directory DEVELOPER=1 $(PROGRAMS) $(SOAK_BIN)
	SOAK_SECONDS=$${SOAK_SECONDS:-120} BIMIP_BIN=$(abspath $(BIN)) $(SOAK_BIN)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/bimip \
	    $(DESTDIR)$(PREFIX)/share/doc/bimip
	install -m 0755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 proto/bimip.proto proto/bimip.options $(DESTDIR)$(PREFIX)/share/bimip/
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/bimip/
	if [ -d deploy/systemd ]; then install -d $(DESTDIR)$(PREFIX)/lib/systemd/system && \
	    install -m 0644 deploy/systemd/*.service $(DESTDIR)$(PREFIX)/lib/systemd/system/; fi
	if [ -d deploy/config ]; then install -d $(DESTDIR)$(PREFIX)/share/bimip/config && \
	    install -m 0644 deploy/config/*.json $(DESTDIR)$(PREFIX)/share/bimip/config/; fi

clean:
	rm -rf build

$(BIN) $(GEN):
	@mkdir -p $@

-include $(ALL_OBJ:.o=.d)
