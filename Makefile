SHELL := /bin/bash
# Build the module against the nginx a user already runs (Debian's stock
# nginx by default), run it locally, test it.
#
#   make            build build/ngx_http_presence_module.so
#   make run        build, start redis-server and nginx on :8080
#                   (REDIS=sentinel or REDIS=cluster: a local Sentinel set
#                   or Cluster from tools/redis-ha instead)
#   make test       build, run the test suite (t/*.t) with prove
#   make test-asan  the suite against an ASan+UBSan build (build/asan)
#   make fuzz       libFuzzer on the input parsers (FUZZ_SECONDS=60 each)
#   make install    build, install the module, its load snippet and the page
#                   (DESTDIR, PREFIX, MODULES_PATH: see tools/install)
#   make uninstall  remove exactly what make install put there
#   make deb        build/deb/libnginx-mod-http-presence_<version>_<arch>.deb
#   make deb-test   build the .deb, install it with apt-get, serve through the
#                   stock nginx, purge it (t/21-deb.t with DEB_TEST=1)
#   make bench      build, run the benchmark (bench/run; DURATION=, QUICK=1)
#   make soak       build, 2 minutes of load under Redis and reload faults
#                   (tools/soak; SOAK_SECONDS=; SOAK_REDIS=cluster: a
#                   Redis Cluster from tools/redis-ha, a master killed
#                   every 20 s)
#
# NGINX_SRC is a configured nginx source tree with a conf_flags file, as
# Debian's nginx-dev installs it; for another nginx see the README.

NGINX_SRC  ?= /usr/share/nginx/src
NGINX      ?= /usr/sbin/nginx
BUILD      ?= $(CURDIR)/build
CC_OPT     ?= -O2 -g
LD_OPT     ?=

MODULE     := $(BUILD)/ngx_http_presence_module.so
SOURCES    := config $(wildcard ngx_*.c ngx_*.h)
PROVE_ARGS ?=

.PHONY: all deps run test test-asan fuzz bench clean

all: $(MODULE)

deps:
	@tools/deps build

$(BUILD)/nginx/objs/Makefile: config | deps
	rm -rf $(BUILD)/nginx
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(BUILD)/nginx
	cd $(BUILD)/nginx && . ./conf_flags && ./configure \
	    "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(CC_OPT)" \
	    --with-ld-opt="$(LD_OPT)" --add-dynamic-module=$(CURDIR) \
	    > $(BUILD)/configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(BUILD)/nginx/objs/Makefile $(SOURCES)
	$(MAKE) -C $(BUILD)/nginx -f objs/Makefile modules
	@# a new inode: a running nginx that mapped the old file keeps it intact
	cp $(BUILD)/nginx/objs/ngx_http_presence_module.so $@.tmp
	mv $@.tmp $@

REDIS      ?=

run: $(MODULE)
	@tools/deps run
	@REDIS=$(REDIS) tools/run

# the same suite against the module built with AddressSanitizer and
# UndefinedBehaviorSanitizer, run in the stock nginx with their runtimes
# preloaded (the browser and packaging tests do not preload them)
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer

test-asan:
	$(MAKE) BUILD=$(BUILD)/asan CC_OPT="-O1 -g $(ASAN_FLAGS)" \
	    LD_OPT="$(ASAN_FLAGS)" all
	@tools/deps test
	TEST_NGINX_MODULE=$(BUILD)/asan/ngx_http_presence_module.so \
	    TEST_NGINX_BINARY=$(NGINX) \
	    TEST_NGINX_ASAN="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    prove $(PROVE_ARGS) t/0*.t t/1*.t

# libFuzzer targets over the functions that read untrusted input
# (fuzz/*.c); FUZZ_SECONDS per target, default 60
fuzz: $(MODULE)
	@tools/deps fuzz
	tools/fuzz

test: $(MODULE)
	@tools/deps test browser fuzz $(if $(TEST_NGINX_VALGRIND),valgrind)
	TEST_NGINX_MODULE=$(MODULE) TEST_NGINX_BINARY=$(NGINX) \
	    prove $(PROVE_ARGS) t/

bench: $(MODULE)
	@tools/deps bench
	BENCH_COMMAND="make bench" NGINX=$(NGINX) MODULE=$(MODULE) \
	    BENCH_DIR=$(BUILD)/bench bench/run

# The soak: wrk load on 2 workers while Redis is killed, frozen and nginx
# reloaded (tools/soak); figures in $(BUILD)/soak.  SOAK_SECONDS=600 runs
# it longer; SOAK_REDIS=cluster runs it on a Redis Cluster, whose masters
# are killed in turn.
SOAK_SECONDS ?= 120
SOAK_REDIS   ?= single

.PHONY: soak
soak: $(MODULE)
	@tools/deps test bench
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_REDIS=$(SOAK_REDIS) SOAK_DIR=$(BUILD)/soak \
	    TEST_NGINX_MODULE=$(MODULE) TEST_NGINX_BINARY=$(NGINX) tools/soak

clean:
	rm -rf $(BUILD)

.PHONY: install uninstall

install: $(MODULE)
	@tools/install install

uninstall:
	@tools/install uninstall

DEB_DIR    ?= $(BUILD)/deb
# what the Debian source package is made of (copied to $(DEB_DIR)/src)
DEB_FILES  := $(SOURCES) html nginx.conf.example README.md debian

.PHONY: deb deb-test

# Built as Debian builds its libnginx-mod-* packages (debian/rules), from a
# copy of the tree so that the repository stays clean.
deb:
	@tools/deps deb
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src
	cp -r $(DEB_FILES) $(DEB_DIR)/src/
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc > $(DEB_DIR)/build.log 2>&1 \
	    || { tail -30 $(DEB_DIR)/build.log; exit 1; }
	@ls $(DEB_DIR)/*.deb

deb-test: deb
	@tools/deps test
	@DEB_TEST=1 DEB_DIR=$(DEB_DIR) prove -v t/21-deb.t \
	    && echo "deb-test: PASS" || { echo "deb-test: FAIL"; exit 1; }
