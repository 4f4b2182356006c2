/*
 * filestore.storage._syncwrite: a whole new blob made durable in one call.
 *
 * Why this exists: a small upload's blob is created, written with O_SYNC,
 * closed, and its directory fsynced. Done from Python on a storage thread,
 * each of those five system calls gives the GIL up and must take it back
 * from the busy event loop, which costs a futex sleep and a wake-up on both
 * sides: about ten context switches of a 4 KiB upload's thirty. Here the
 * whole sequence runs under one release of the GIL.
 *
 * It does nothing the Python path in local.py does not do, in the same
 * order, with the same flags and the same clean-up: that path stays, for
 * builds without a C compiler, and the tests run both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

PyDoc_STRVAR(write_new_doc,
"write_new(directory, name, data, mode, /)\n"
"--\n"
"\n"
"Create ``name`` in ``directory`` (it must not exist), write all of\n"
"``data`` to it with O_SYNC, close it and fsync ``directory``, without the\n"
"GIL. If anything after the create fails, the file is unlinked before the\n"
"OSError is raised, so a failed call leaves no file.");

static PyObject *
write_new(PyObject *module, PyObject *args)
{
    PyObject *directory = NULL, *name = NULL;
    Py_buffer data;
    int mode;

    (void)module;
    if (!PyArg_ParseTuple(args, "O&O&y*i:write_new", PyUnicode_FSConverter, &directory,
                          PyUnicode_FSConverter, &name, &data, &mode)) {
        return NULL;
    }
    const char *dir_path = PyBytes_AS_STRING(directory);
    const char *file_name = PyBytes_AS_STRING(name);
    if (file_name[0] == '\0' || strchr(file_name, '/') != NULL) {
        PyErr_SetString(PyExc_ValueError, "write_new: name must be a plain file name");
        goto done;
    }

    int err = 0;              /* errno of the first failure */
    PyObject *culprit = name; /* the path the error names */
    Py_BEGIN_ALLOW_THREADS
    int dir_fd, fd;
    do {
        dir_fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (dir_fd < 0 && errno == EINTR);
    if (dir_fd < 0) {
        err = errno;
        culprit = directory;
    } else {
        do {
            fd = openat(dir_fd, file_name, O_WRONLY | O_CREAT | O_EXCL | O_SYNC | O_CLOEXEC,
                        (mode_t)mode);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) {
            err = errno;
        } else {
            const char *at = data.buf;
            Py_ssize_t left = data.len;
            while (left > 0) {
                ssize_t n = write(fd, at, (size_t)left);
                if (n < 0 && errno == EINTR) {
                    continue;
                }
                if (n <= 0) {
                    err = n < 0 ? errno : EIO;
                    break;
                }
                at += n;
                left -= n;
            }
            /* close is not retried on EINTR: on Linux the descriptor is gone. */
            if (close(fd) < 0 && err == 0 && errno != EINTR) {
                err = errno;
            }
            while (err == 0 && fsync(dir_fd) < 0) {
                if (errno != EINTR) {
                    err = errno;
                    culprit = directory;
                }
            }
            if (err != 0) {
                unlinkat(dir_fd, file_name, 0);
            }
        }
        close(dir_fd);
    }
    Py_END_ALLOW_THREADS

    if (err != 0) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, culprit);
    }

done:
    PyBuffer_Release(&data);
    Py_DECREF(directory);
    Py_DECREF(name);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"write_new", write_new, METH_VARARGS, write_new_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "filestore.storage._syncwrite",
    .m_doc = "A whole new blob made durable under one release of the GIL.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__syncwrite(void)
{
    return PyModuleDef_Init(&module_def);
}
