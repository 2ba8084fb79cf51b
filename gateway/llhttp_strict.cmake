# upgate_llhttp_strict(<target> <llhttp source dir>): a static library with llhttp's state
# machine built in strict mode, for the parsers of client input (http/llhttp_strict.h).
#
# Debian's generated llhttp.c holds a strict and a loose machine behind LLHTTP_STRICT_MODE. The
# loose one (the default, which responses keep) skips any two bytes after a chunk's data, takes a
# CR not followed by LF as the end of a head and lets raw control and non-ASCII bytes into the
# target: one client message could then frame as two requests upstream where another parser
# reads one. This copy of llhttp.c renames its own functions and states (llhttp__internal_*) so
# it links beside the loose library; the callbacks and api.c (which do not depend on the mode)
# are shared (a newer llhttp that defined other non-static functions in llhttp.c would fail to
# link with "multiple definition": extend the renaming here). The copy lands in the caller's
# binary directory and is rewritten only when Debian's file changes.
function(upgate_llhttp_strict target source_dir)
  set(src "${source_dir}/llhttp.c")
  file(READ "${src}" code)
  foreach(name llhttp__internal__ llhttp__internal_init llhttp__internal_execute)
    string(REPLACE "${name}" "upgate_strict_${name}" code "${code}")
  endforeach()
  set(out "${CMAKE_CURRENT_BINARY_DIR}/llhttp_strict.c")
  file(WRITE "${out}.new" "${code}")
  configure_file("${out}.new" "${out}" COPYONLY)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${src}")
  add_library(${target} STATIC "${out}")
  target_compile_definitions(${target} PRIVATE LLHTTP_STRICT_MODE=1)
endfunction()
